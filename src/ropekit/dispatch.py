"""Which kernel rotates a call, and what it is handed: backend selection and prepared inputs.

``prepare`` turns checked arguments into the one kernel contract (``kernels.reference``):
canonical ``[B, S, H, D]`` views, ``[B, S]`` int64 table rows and compact tables (or, for
``spec=`` on triton, fixed-point frequencies for in-kernel angles).

>>> import torch
>>> from ropekit.dispatch import select_backend
>>> select_backend(torch.zeros(1 << 20), None)[0], select_backend(torch.zeros(8), None)[0]
('cpu', 'reference')
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .arguments import canonical_view, check_format, check_tables, shape_str
from .errors import (
    RopeArgumentError,
    RopePositionError,
    RopeShapeError,
    RopeTypeError,
    require,
    short_repr,
)
from .layouts import normalize_layout
from .positions import flatten_batched_table, resolve_positions

__all__ = ["BACKENDS", "CPU_COMPILE_MIN_NUMEL", "select_backend", "backend_name", "check_values", "prepare"]

BACKENDS = ("reference", "cpu", "triton")

KernelFn = Callable[..., torch.Tensor]

#: with gradients, auto dispatch on CPU takes backend "cpu" (the native kernel) for tensors at
#: least this big (q in apply_rope_qk); the reference below
CPU_COMPILE_MIN_NUMEL = 1 << 20

_log = logging.getLogger("ropekit")
_WARNED: dict[str, bool] = {}


def _triton_available() -> bool:
    # a plain import statement: torch.compile traces it (importlib calls would break the graph)
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def backend_name(x: torch.Tensor, backend: str | None) -> str:
    """The backend for ``x``: ``backend`` when named (checked against the device), else by device."""
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise RopeArgumentError(f"backend={short_repr(backend)} must be None (auto) or one of {BACKENDS}")
    if backend is not None:
        if backend == "triton":
            if not _triton_available():
                require("triton", "triton")  # raises MissingDependencyError naming the extra
            from .kernels.triton import interpreting

            if x.device.type != "cuda" and not interpreting():
                raise RopeArgumentError(
                    f"backend='triton' needs a CUDA tensor, got one on {x.device} "
                    "(TRITON_INTERPRET=1 runs the kernel on the CPU, for testing)"
                )
        if backend == "cpu" and x.device.type != "cpu":
            raise RopeArgumentError(f"backend='cpu' needs a CPU tensor, got one on {x.device}")
        if backend == "cpu":  # asked for by name: wait for the native kernel's one-time build
            from .kernels.cpu import ready

            ready(wait=True)
        return backend
    if x.device.type == "cuda":
        if _triton_available():
            return "triton"
        if not _WARNED.get("no_triton"):  # visible, once per process (not once per call)
            _log.warning("ropekit: triton is not installed; CUDA tensors use the (slower) reference rotation")
            _WARNED["no_triton"] = True
        return "reference"
    if x.device.type == "cpu":
        # below ~1M elements the reference is already fast
        return "cpu" if x.numel() >= CPU_COMPILE_MIN_NUMEL else "reference"
    return "reference"  # any other device: plain torch works everywhere


def select_backend(x: torch.Tensor, backend: str | None) -> tuple[str, KernelFn]:
    """The kernel for ``x``: ``backend`` when named, otherwise the best available for its device
    (CUDA: ``"triton"`` when importable; CPU: ``"cpu"``, the native kernel, for tensors of at
    least ``CPU_COMPILE_MIN_NUMEL`` elements and ``"reference"`` below; any other device:
    ``"reference"``).  On CPU, a call that wants no gradient and is not being traced by
    torch.compile skips the custom-op dispatch (``ropekit.fastpath``): it calls the native kernel
    directly once that is loaded, ``kernels.eager`` (the reference's floats in a third of the
    operators) until then."""
    name = backend_name(x, backend)
    from .kernels.ops import kernel_for

    return name, kernel_for(name)


def check_values() -> bool:
    # value checks read tensors on the host (.item()); under torch.compile they would break the
    # graph, so the traced program relies on the checks of the eager calls that preceded it
    return not torch.compiler.is_compiling()


_FREQS_CACHE: dict[tuple, tuple[torch.Tensor, float]] = {}


def _freqs_for(spec, pos: torch.Tensor, device) -> tuple[torch.Tensor, float, int | None]:
    """Fixed-point turns + attention factor for the in-kernel angles, cached under everything that
    changes them: the whole spec, the device, and seq_len only where the scaling reads it."""
    from .frequencies import inv_freq
    from .kernels.triton import MAX_FREQS_POSITION, turns_fixed_point

    hi = int(pos.max().item()) if pos.numel() else 0
    if hi > MAX_FREQS_POSITION:
        raise RopePositionError(
            f"a token has position {hi}; in-kernel angles support positions <= {MAX_FREQS_POSITION}"
        )
    reads_seq_len = spec.scaling is not None and spec.scaling.kind in ("dynamic", "longrope")
    seq_len = hi + 1 if reads_seq_len else None
    key = (spec.to_json(), seq_len, str(device))
    if key not in _FREQS_CACHE:
        inv, factor = inv_freq(spec, seq_len=seq_len)
        _FREQS_CACHE[key] = (turns_fixed_point(inv).to(device), float(factor))
    return (*_FREQS_CACHE[key], seq_len)


def _check_spec_call(tensors, names, cos, sin, spec, layout) -> str:
    """spec= instead of tables: the layout it implies, every head_dim equal to spec.head_dim."""
    from .spec import RopeSpec

    if not isinstance(spec, RopeSpec):
        raise RopeTypeError(f"spec must be a ropekit.RopeSpec, got {type(spec).__name__}")
    if cos is not None or sin is not None:
        raise RopeArgumentError("pass either cos/sin tables or spec=, not both")
    if spec.mrope_section is not None:
        raise RopeArgumentError("spec= does not support multimodal (mrope) specs; build tables with ropekit.cos_sin")
    layout = spec.layout if layout is None else layout
    if normalize_layout(layout) != spec.layout:
        raise RopeArgumentError(f"layout={short_repr(layout)} disagrees with spec.layout={spec.layout!r}")
    dummy = torch.empty(0, spec.n_pairs)
    for x, name in zip(tensors, names):
        check_tables(x, dummy.to(x.device), dummy.to(x.device), name)
        if x.shape[-1] != spec.head_dim:
            raise RopeShapeError(f"{name} {shape_str(x)} has head_dim {x.shape[-1]} but spec.head_dim={spec.head_dim}")
    return layout


def prepare(tensors, names, cos, sin, *, spec, layout, format, positions, offsets, cu_seqlens, backend):
    """Checked canonical views, the layout, tables (or frequencies), [B, S] rows and the backend."""
    format = check_format(format)
    if spec is not None:
        layout = _check_spec_call(tensors, names, cos, sin, spec, layout)
    else:
        if cos is None or sin is None:
            raise RopeArgumentError("cos and sin are required (from ropekit.cos_sin), or pass spec=")
        for x, name in zip(tensors, names):
            check_tables(x, cos, sin, name)
    layout = normalize_layout("half" if layout is None else layout)
    views = [canonical_view(x, format, name) for x, name in zip(tensors, names)]
    x4 = views[0]
    n_rows = cos.shape[0] if spec is None and cos.dim() == 2 and check_values() else None
    pos = resolve_positions(x4, format, positions, offsets, cu_seqlens, n_rows=n_rows, check=check_values())
    name = backend_name(x4, backend)
    if spec is not None:
        if name == "triton":
            fixed, factor, _ = _freqs_for(spec, pos, x4.device)
            return views, layout, fixed, torch.tensor([factor], dtype=torch.float64), pos, "triton_freqs"
        # other backends: exact fp64 angles for exactly these tokens, one row per token
        from .tables import cos_sin

        dtype = torch.float64 if x4.dtype == torch.float64 else torch.float32
        cos, sin = cos_sin(spec, pos, dtype=dtype, device=x4.device)  # [B, S, R]: row j of batch b
        pos = torch.arange(pos.shape[1], device=x4.device).expand_as(pos)  # is token j's own row
    if cos.dim() == 3:
        cos, sin, pos = flatten_batched_table(cos, sin, x4, pos, check=check_values())
    return views, layout, cos, sin, pos, name


def table_grad_route(cos, sin, backend_name: str) -> bool:
    """Learnable tables: only the reference (plain autograd) differentiates cos/sin."""
    wants = torch.is_grad_enabled() and cos is not None and (cos.requires_grad or sin.requires_grad)
    if wants and backend_name != "reference":
        raise RopeArgumentError(
            f"cos/sin require grad, which backend={backend_name!r} does not differentiate; use backend='reference'"
        )
    return wants
