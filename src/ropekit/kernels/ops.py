"""The rotation as ``torch.library`` custom ops: one opaque node for ``torch.compile`` (no graph
break, a fake implementation for tracing) with autograd whose backward is the inverse rotation
by the same kernel (the rotation is orthogonal: its Jacobian transposed is the rotation by -angle,
and the pass-through tail passes its gradient through).

Ops (``backend`` names the implementation: ``"reference"``, ``"cpu"``, ``"triton"``, or
``"triton_freqs"``, for which ``cos`` holds ``triton.turns_fixed_point(inv_freq)`` and ``sin``
the attention factor as a one-element float64 tensor):

* ``ropekit::rope(x, cos, sin, pos, interleaved, inverse, backend) -> y``
* ``ropekit::rope_qk(q, k, cos, sin, pos, ...) -> (q', k')``   (one launch on triton)
* ``ropekit::rope_`` / ``ropekit::rope_qk_``: in place (mutate their inputs; no autograd of their
  own: ``rotate_inplace_differentiable`` wraps them when a gradient is wanted)

>>> import torch, ropekit as rk
>>> from ropekit.kernels import ops
>>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=4), 3)
>>> x = torch.randn(1, 3, 2, 4)
>>> pos = torch.arange(3)[None]
>>> y = torch.ops.ropekit.rope(x, cos, sin, pos, False, False, "reference")
>>> torch.allclose(torch.ops.ropekit.rope(y, cos, sin, pos, False, True, "reference"), x, atol=1e-6)
True
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import rotate_reference

__all__ = [
    "rope",
    "rope_",
    "rope_qk",
    "rope_qk_",
    "IMPLEMENTATIONS",
    "kernel_for",
    "rotate",
    "rotate_inplace_differentiable",
]

IMPLEMENTATIONS = ("reference", "cpu", "triton", "triton_freqs")


def kernel_for(backend: str):
    if backend == "reference":
        return rotate_reference
    if backend == "cpu":
        from .cpu import rotate_cpu

        return rotate_cpu
    if backend in ("triton", "triton_freqs"):
        from .triton import rotate_triton

        return rotate_triton
    raise ValueError(f"backend={backend!r} must be one of {IMPLEMENTATIONS}")


def _extra(backend: str, sin: Tensor) -> dict:
    # the in-kernel-angle mode: sin carries the attention factor (kept a tensor so that the op
    # schema stays the same for every backend)
    return {"source": "freqs", "factor": float(sin.reshape(-1)[0])} if backend == "triton_freqs" else {}


def _run(x, cos, sin, pos, interleaved, inverse, backend, inplace):
    return kernel_for(backend)(
        x, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace, **_extra(backend, sin)
    )


def _run_qk(q, k, cos, sin, pos, interleaved, inverse, backend, inplace):
    if backend in ("triton", "triton_freqs"):
        from .triton import rotate_qk_triton

        return rotate_qk_triton(
            q, k, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace, **_extra(backend, sin)
        )
    if backend == "cpu":
        from .cpu import rotate_qk_cpu

        return rotate_qk_cpu(q, k, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)
    return (
        _run(q, cos, sin, pos, interleaved, inverse, backend, inplace),
        _run(k, cos, sin, pos, interleaved, inverse, backend, inplace),
    )


def _run_many(xs, cos, sin, pos, interleaved, inverse, backend, inplace) -> list:
    if len(xs) == 2:
        return list(_run_qk(xs[0], xs[1], cos, sin, pos, interleaved, inverse, backend, inplace))
    return [_run(xs[0], cos, sin, pos, interleaved, inverse, backend, inplace)]


# --- out of place, differentiable -------------------------------------------------------------


@torch.library.custom_op("ropekit::rope", mutates_args=())
def rope(x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, interleaved: bool, inverse: bool, backend: str) -> Tensor:
    return _run(x, cos, sin, pos, interleaved, inverse, backend, inplace=False)


def _like(x: Tensor, backend: str) -> Tensor:
    # the cpu path returns inductor's contiguous result; the others keep x's memory order
    return x.new_empty(x.shape) if backend == "cpu" else torch.empty_like(x)


@rope.register_fake
def _(x, cos, sin, pos, interleaved, inverse, backend):
    return _like(x, backend)


def _setup(ctx, inputs, output):
    _, cos, sin, pos, interleaved, inverse, backend = inputs
    ctx.save_for_backward(cos, sin, pos)
    ctx.interleaved, ctx.inverse, ctx.backend = interleaved, inverse, backend


def _rope_backward(ctx, grad):
    cos, sin, pos = ctx.saved_tensors
    gx = rope(grad, cos, sin, pos, ctx.interleaved, not ctx.inverse, ctx.backend)
    return gx, None, None, None, None, None, None


rope.register_autograd(_rope_backward, setup_context=_setup)


@torch.library.custom_op("ropekit::rope_qk", mutates_args=())
def rope_qk(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, interleaved: bool, inverse: bool, backend: str
) -> tuple[Tensor, Tensor]:
    return _run_qk(q, k, cos, sin, pos, interleaved, inverse, backend, inplace=False)


@rope_qk.register_fake
def _(q, k, cos, sin, pos, interleaved, inverse, backend):
    return _like(q, backend), _like(k, backend)


def _setup_qk(ctx, inputs, output):
    _, _, cos, sin, pos, interleaved, inverse, backend = inputs
    ctx.save_for_backward(cos, sin, pos)
    ctx.interleaved, ctx.inverse, ctx.backend = interleaved, inverse, backend


def _rope_qk_backward(ctx, gq, gk):
    cos, sin, pos = ctx.saved_tensors
    gq, gk = rope_qk(gq, gk, cos, sin, pos, ctx.interleaved, not ctx.inverse, ctx.backend)
    return gq, gk, None, None, None, None, None, None


rope_qk.register_autograd(_rope_qk_backward, setup_context=_setup_qk)


# --- in place ---------------------------------------------------------------------------------


@torch.library.custom_op("ropekit::rope_", mutates_args=("x",))
def rope_(x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, interleaved: bool, inverse: bool, backend: str) -> None:
    _run(x, cos, sin, pos, interleaved, inverse, backend, inplace=True)


@rope_.register_fake
def _(x, cos, sin, pos, interleaved, inverse, backend):
    return None


@torch.library.custom_op("ropekit::rope_qk_", mutates_args=("q", "k"))
def rope_qk_(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, interleaved: bool, inverse: bool, backend: str
) -> None:
    _run_qk(q, k, cos, sin, pos, interleaved, inverse, backend, inplace=True)


@rope_qk_.register_fake
def _(q, k, cos, sin, pos, interleaved, inverse, backend):
    return None


# --- eager calls: the same kernels and autograd, without the custom-op dispatcher ------------
# A custom op's first eager call imports torch._dynamo (torch wraps every op implementation in a
# dynamo guard that it resolves on first use): 2-10 s on our machines, paid by the first
# differentiable call of every process.  Outside torch.compile the ops are not needed (they exist
# so that tracing sees one opaque node), so eager calls run the kernels directly, with this
# autograd.Function: the same backward, the inverse rotation by the same kernel.


class _Rotate(torch.autograd.Function):
    """Out of place, one tensor or (q, k); differentiable in x (and again in its gradient: the
    backward is itself this Function).  cos/sin never require grad here (``table_grad_route``
    sends learnable tables to the plain-autograd reference)."""

    @staticmethod
    def forward(ctx, cos, sin, pos, interleaved, inverse, backend, *xs):
        ctx.save_for_backward(cos, sin, pos)
        ctx.interleaved, ctx.inverse, ctx.backend = interleaved, inverse, backend
        return tuple(_run_many(xs, cos, sin, pos, interleaved, inverse, backend, inplace=False))

    @staticmethod
    def backward(ctx, *grads):
        cos, sin, pos = ctx.saved_tensors
        gxs = _Rotate.apply(cos, sin, pos, ctx.interleaved, not ctx.inverse, ctx.backend, *grads)
        return (None,) * 6 + tuple(gxs)


def rotate(views, cos, sin, pos, interleaved: bool, inverse: bool, backend: str, inplace: bool) -> list:
    """Rotate one tensor or (q, k) (``[B, S, H, D]`` views): the outputs (in place: the views).
    Under torch.compile through the custom ops (one opaque node each); eagerly straight to the
    kernels (no op dispatch, no dynamo import); autograd either way.

    >>> import torch, ropekit as rk
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=4), 3)
    >>> x = torch.randn(1, 3, 2, 4, requires_grad=True)
    >>> (y,) = rotate([x], cos, sin, torch.arange(3)[None], False, False, "reference", False)
    >>> y.sum().backward(); x.grad.shape
    torch.Size([1, 3, 2, 4])
    """
    grad = torch.is_grad_enabled() and any(v.requires_grad for v in views)
    if inplace and grad:
        return list(rotate_inplace_differentiable(views, cos, sin, pos, interleaved, inverse, backend))
    if not torch.compiler.is_compiling():
        if grad:
            return list(_Rotate.apply(cos, sin, pos, bool(interleaved), bool(inverse), backend, *views))
        outs = _run_many(views, cos, sin, pos, interleaved, inverse, backend, inplace)
        return list(views) if inplace else outs
    if len(views) == 1:
        if inplace:
            rope_(views[0], cos, sin, pos, interleaved, inverse, backend)
            return list(views)
        return [rope(views[0], cos, sin, pos, interleaved, inverse, backend)]
    if inplace:
        rope_qk_(*views, cos, sin, pos, interleaved, inverse, backend)
        return list(views)
    return list(rope_qk(*views, cos, sin, pos, interleaved, inverse, backend))


# --- in place, differentiable ----------------------------------------------------------------


class _RotateInPlace(torch.autograd.Function):
    """In place with autograd (flash-attn's ``apply_rotary_emb(..., inplace=True)``): the forward
    rotates its input in place (``mark_dirty``: autograd rewrites its history, also that of the
    base tensor it may be a view of; the rotated tensor is the first argument because autograd's
    bookkeeping for views expects it there); the backward is the inverse rotation of the
    incoming gradient by the same kernel.

    The backward writes a fresh gradient rather than rotating the incoming one in place: autograd
    may hand one gradient tensor to several consumers (the two inputs of an add get the same
    object) or an expanded one (``y.sum()`` gives stride-0 ones), and rotating that buffer in
    place would silently corrupt the other consumer's gradient.  The numbers are the same."""

    @staticmethod
    def forward(ctx, x, cos, sin, pos, interleaved, inverse, backend):
        ctx.eager = not torch.compiler.is_compiling()  # decided once: the backward follows the forward
        if ctx.eager:
            _run(x, cos, sin, pos, interleaved, inverse, backend, inplace=True)
        else:
            rope_(x, cos, sin, pos, interleaved, inverse, backend)
        ctx.mark_dirty(x)
        ctx.save_for_backward(cos, sin, pos)
        ctx.interleaved, ctx.inverse, ctx.backend = interleaved, inverse, backend
        return x

    @staticmethod
    def backward(ctx, grad):
        cos, sin, pos = ctx.saved_tensors
        args = (cos, sin, pos, ctx.interleaved, not ctx.inverse, ctx.backend)
        gx = _Rotate.apply(*args, grad)[0] if ctx.eager else rope(grad, *args)
        return (gx,) + (None,) * 6


def rotate_inplace_differentiable(views, cos, sin, pos, interleaved: bool, inverse: bool, backend: str) -> tuple:
    """Rotate one tensor or (q, k) (``[B, S, H, D]`` views) in place, recorded for autograd.

    >>> import torch, ropekit as rk
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=4), 3)
    >>> w = torch.randn(1, 3, 2, 4, requires_grad=True)
    >>> x = w * 1.0                                            # not a leaf: may change in place
    >>> (y,) = rotate_inplace_differentiable([x], cos, sin, torch.arange(3)[None], False, False, "reference")
    >>> y is x, x.grad_fn is not None
    (True, True)
    """
    from ..errors import RopeArgumentError

    for v in views:
        base = v if v._base is None else v._base
        if base.is_leaf and base.requires_grad:
            raise RopeArgumentError(
                "inplace=True on a leaf tensor that requires grad (a parameter, or a tensor created with "
                "requires_grad=True): autograd cannot rotate it in place; rotate the result of an operation, "
                "or use inplace=False"
            )
    # one tensor at a time: autograd records an in-place change of a view one view per node
    return tuple(_RotateInPlace.apply(v, cos, sin, pos, bool(interleaved), bool(inverse), backend) for v in views)
