"""calls: how the doctor calls a black-box rotary function.

Every call gets its own copy of its inputs (an in-place implementation must not change what the
next call, or the other function of a comparison, sees), and what comes back is checked before
anything reads it: a float tensor shaped like x, on a device it can be read from.  ``call_twice``
calls a function twice on the same input and says when the two results differ: a function that
is not deterministic cannot be fingerprinted or compared, and must not be called "equivalent"
(or "offset -1, fix verified") by chance.

>>> import torch
>>> call_rope(lambda x, p: x.mul_(2), torch.ones(1, 2), torch.tensor([0])).tolist()
[[2.0, 2.0]]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import RopeArgumentError, RopeError, RopeShapeError

__all__ = ["RopeFn", "call_rope", "call_twice"]

RopeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def call_rope(fn: RopeFn, x: torch.Tensor, positions: torch.Tensor, name: str = "fn") -> torch.Tensor:
    """Call a black-box rotary function on copies of ``x`` and ``positions`` and check that it
    returned a float tensor shaped like x (detached, on the CPU).

    >>> import torch
    >>> call_rope(lambda x, p: x, torch.ones(2, 4), torch.tensor([0, 1])).shape
    torch.Size([2, 4])
    >>> call_rope(lambda x, p: x[:, :2], torch.ones(2, 4), torch.tensor([0, 1]), "mine")
    Traceback (most recent call last):
    ...
    ropekit.errors.RopeShapeError: mine returned shape [2, 2] for input [2, 4]; they must match
    """
    try:
        y = fn(x.clone(), positions.clone())
    except RopeError:
        raise
    except Exception as exc:  # a user's function: say whose call failed and with what
        hint = ""
        if isinstance(exc, (IndexError, RuntimeError)) and int(positions.max()) > 8:
            hint = (
                " (if fn only supports positions up to a cached length, probe below it: "
                "max_position=..., CLI --max-position)"
            )
        raise RopeError(
            f"{name}(x[{x.shape[0]}, {x.shape[1]}] {x.dtype}, positions[{positions.shape[0]}] up to "
            f"{int(positions.max())}) raised {type(exc).__name__}: {str(exc)[:300]}{hint}"
        ) from exc
    if not isinstance(y, torch.Tensor):
        raise RopeShapeError(f"{name} returned {type(y).__name__}; it must return the rotated tensor")
    if tuple(y.shape) != tuple(x.shape):
        raise RopeShapeError(f"{name} returned shape {list(y.shape)} for input {list(x.shape)}; they must match")
    if not y.is_floating_point():
        raise RopeShapeError(f"{name} returned dtype {y.dtype}; a rotation returns floats")
    if y.device.type == "meta" or y.is_sparse:
        raise RopeArgumentError(
            f"{name} returned a {'meta' if y.device.type == 'meta' else 'sparse'} tensor: the doctor needs its values"
        )
    return y.detach().to("cpu")


def call_twice(fn: RopeFn, x: torch.Tensor, positions: torch.Tensor, name: str = "fn") -> torch.Tensor:
    """``call_rope`` twice on the same input; a RopeArgumentError when the two results differ.

    >>> import torch
    >>> call_twice(lambda x, p: x + torch.rand(()), torch.ones(1, 2), torch.tensor([0]), "noisy")
    Traceback (most recent call last):
    ...
    ropekit.errors.RopeArgumentError: noisy is not deterministic: two calls on the same input differ
        (max |difference| ...
    """
    first = call_rope(fn, x, positions, name)
    second = call_rope(fn, x, positions, name)
    same = first.dtype == second.dtype and torch.equal(first.double().nan_to_num(7.0), second.double().nan_to_num(7.0))
    if not same:
        diff = (first.double() - second.double()).abs().nan_to_num(float("inf")).max().item()
        raise RopeArgumentError(
            f"{name} is not deterministic: two calls on the same input differ (max |difference| {diff:.3g}); "
            f"a rotary embedding is a fixed function of x and positions: fix the randomness (state kept "
            f"between calls, random offsets, dropout) before fingerprinting or comparing it"
        )
    return first
