"""The fast CPU path (backend ``"cpu"``): the native C kernel of ``kernels.native`` when it is
loaded, the lean eager rotation of ``kernels.eager`` until then.

RoPE is memory-bound: the floor is one read and one write of x.  The native kernel makes exactly
that one pass (in place too: each pair is read before it is written), bit for bit the reference.
Until it is loaded (its first build on a machine runs in the background, about a second) or
where it cannot be built (no C compiler), calls take the lean eager path: the same floats, about
2-3 passes over memory instead of one.  That fallback is visible: a log line on the ``ropekit``
logger, and ``status()``.

Earlier releases compiled this path with ``torch.compile``; its first call cost 10-17 s in every
fresh process (see docs/speed.md), which is why it is gone.

>>> from ropekit.kernels.cpu import status
>>> sorted(status())
['fallback_reason', 'native']
"""

from __future__ import annotations

import torch

from . import native
from .eager import rotate_lean
from .huge_pages import new_output
from .reference import compute_dtype, rotate_reference

__all__ = ["rotate_cpu", "rotate_qk_cpu", "rotate_many_cpu", "status", "ready"]


def ready(wait: bool = False) -> bool:
    """Whether the native kernel serves calls now (starts its build in the background when needed;
    ``wait=True`` builds it first)."""
    return native.ensure(wait=wait)


def status() -> dict:
    """What the CPU path is doing: the native kernel's state, and why calls use the eager rotation
    (None when they do not).

    >>> from ropekit.kernels.cpu import status
    >>> status()["fallback_reason"] is None or isinstance(status()["fallback_reason"], str)
    True
    """
    st = native.status()
    reason = None
    if st["state"] == "building":
        reason = "the native CPU kernel is being built (once per machine)"
    elif st["state"] == "unavailable":
        reason = st["reason"]
    return {"native": st, "fallback_reason": reason}


def _eager(tensors, cos, sin, pos, *, interleaved, inverse, inplace):
    if tensors[0].dtype == torch.float64 or cos.shape[-1] == 0:
        outs = [
            rotate_reference(t, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)
            for t in tensors
        ]
    else:
        math = compute_dtype(tensors[0].dtype)
        c, s = cos.to(math)[pos], sin.to(math)[pos]  # [B, S, R]: gathered once for q and k
        outs = rotate_lean(list(tensors), c, s, interleaved=interleaved, inverse=inverse, inplace=inplace)
    # the op's fake promises a contiguous result (torch.compile plans with it): keep the promise
    return outs if inplace else [o.contiguous() for o in outs]


def rotate_many_cpu(tensors, cos, sin, pos, *, interleaved: bool, inverse: bool, inplace: bool):
    """One tensor or (q, k) (``[B, S, H, D]`` views sharing ``pos``): the outputs, or the inputs
    themselves when ``inplace``."""
    tensors = list(tensors)
    same = all(t.dtype == tensors[0].dtype for t in tensors)
    if not (same and native.supports(tensors[0], cos) and ready()):
        if not same:
            return [
                rotate_many_cpu([t], cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)[0]
                for t in tensors
            ]
        return _eager(tensors, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)
    outs = tensors if inplace else [new_output(t) for t in tensors]
    native.rotate_native(list(zip(tensors, outs)), cos, sin, pos, interleaved=interleaved, inverse=inverse)
    return outs


def rotate_cpu(x4, cos, sin, pos, *, interleaved: bool, inverse: bool, inplace: bool) -> torch.Tensor:
    """The kernel contract of ``kernels.reference`` on one tensor."""
    return rotate_many_cpu([x4], cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)[0]


def rotate_qk_cpu(q4, k4, cos, sin, pos, *, interleaved: bool, inverse: bool, inplace: bool):
    """q and k in one call (their rows split over the same threads)."""
    out = rotate_many_cpu([q4, k4], cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)
    return out[0], out[1]
