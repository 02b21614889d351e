"""apply_rope / apply_rope_qk: argument checking, position resolution, and the one dispatcher.

Every format is viewed as ``[B, S, H, D]`` (``bhsd`` through a transpose, ``thd`` as one batch
of T tokens) and every position form becomes one int64 table-row index per token ``[B, S]``.
Backends therefore see a single contract (``kernels.reference``) whatever the caller passed.

>>> import ropekit as rk, torch
>>> spec = rk.RopeSpec(head_dim=8)
>>> cos, sin = rk.cos_sin(spec, 16)
>>> q = torch.randn(2, 5, 3, 8)                               # bshd
>>> y = rk.apply_rope(q, cos, sin)
>>> torch.allclose(rk.apply_rope(y, cos, sin, inverse=True), q, atol=1e-6)
True
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .errors import RopePositionError, RopeShapeError
from .kernels.eager import rotate_lean
from .kernels.reference import compute_dtype, rotate_reference
from .layouts import LAYOUTS, is_interleaved, normalize_layout
from .tables import as_positions

__all__ = [
    "apply_rope",
    "apply_rope_qk",
    "apply_rope_qkv",
    "FORMATS",
    "BACKENDS",
    "resolve_positions",
    "select_backend",
]

FORMATS = ("bshd", "bhsd", "thd")
BACKENDS = ("reference", "cpu", "triton")

KernelFn = Callable[..., torch.Tensor]

#: auto dispatch on CPU compiles (backend "cpu") only tensors at least this big (q in apply_rope_qk)
CPU_COMPILE_MIN_NUMEL = 1 << 20


# ---------------------------------------------------------------------------------------------
# checking and canonical views
# ---------------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise RopeShapeError(f"format={format!r} must be one of {FORMATS}")
    return format


def _check_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise RopeShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise RopeShapeError(f"{name} has dtype {x.dtype}; rotation needs a floating-point tensor")
    for label, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise RopeShapeError(f"{label} must be a floating-point tensor (from ropekit.cos_sin)")
        if t.device != x.device:
            raise RopeShapeError(f"{label} is on {t.device} but {name} is on {x.device}; move one of them")
    if cos.shape != sin.shape:
        raise RopeShapeError(f"cos {_shape(cos)} and sin {_shape(sin)} must have the same shape")
    if cos.dim() not in (2, 3):
        raise RopeShapeError(
            f"cos {_shape(cos)} must be a compact table [positions, rotary_dim/2] "
            f"(or [batch, seq, rotary_dim/2] already gathered per batch)"
        )
    if 2 * cos.shape[-1] > x.shape[-1]:
        raise RopeShapeError(
            f"cos {_shape(cos)} rotates {2 * cos.shape[-1]} dims but {name} {_shape(x)} has head_dim "
            f"{x.shape[-1]}; tables are compact (one column per pair), not transformers' duplicated form"
        )


def _canonical_view(x: torch.Tensor, format: str, name: str) -> torch.Tensor:
    want = 3 if format == "thd" else 4
    if x.dim() != want:
        raise RopeShapeError(f"{name} {_shape(x)} has {x.dim()} dims; format={format!r} needs {want}")
    if format == "bshd":
        return x
    if format == "bhsd":
        return x.transpose(1, 2)
    return x.unsqueeze(0)


def _token_dims(t: torch.Tensor, format: str) -> tuple[int, ...]:
    """The dims that index tokens: (batch, seq) for bshd/bhsd, (tokens,) for thd."""
    if format == "thd":
        return tuple(t.shape[:1])
    seq_dim = 2 if format == "bhsd" else 1
    return (t.shape[0], t.shape[seq_dim]) if t.dim() > seq_dim else tuple(t.shape)


def _int_tensor(value, name: str, device) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise RopePositionError(f"{name} has dtype {t.dtype}; it must hold integers")
    return t.to(device=device, dtype=torch.int64)


def resolve_positions(
    x4: torch.Tensor,
    format: str,
    positions=None,
    offsets=None,
    cu_seqlens=None,
    n_rows: int | None = None,
    check: bool = True,
) -> torch.Tensor:
    """One table row per token, ``[B, S]`` int64, for the canonical view ``x4``.

    positions: ``[S]`` (shared by the batch), ``[B, S]``, or ``[T]`` for thd.
    offsets (only without positions): an int, or one per batch row (per sequence for thd).
    cu_seqlens (thd): ``[N + 1]`` cumulative lengths; positions restart at each sequence.
    check: validate values (reads them on the host; off while torch.compile traces).
    """
    B, S = x4.shape[0], x4.shape[1]
    device = x4.device
    host_bounds = None
    if positions is not None and offsets is not None:
        raise RopePositionError("pass either positions or offsets, not both (add the offset to positions)")
    if positions is not None:
        # as_positions validates values on the host (.item()): only outside torch.compile
        pos = as_positions(positions) if check else torch.as_tensor(positions)
        if pos.is_floating_point():
            raise RopePositionError(f"positions has dtype {pos.dtype}; table rows are indexed by integers")
        pos = pos.to(device=device, dtype=torch.int64)
        if pos.dim() == 1 and pos.shape[0] == S:
            pos = pos.expand(B, S)
        elif format == "thd" and pos.dim() == 2 and pos.shape == (1, S):
            pass
        elif pos.dim() != 2 or pos.shape != (B, S):
            want = f"[{S}]" if format == "thd" else f"[{S}] or [{B}, {S}]"
            raise RopeShapeError(f"positions {_shape(pos)} does not match the tokens of x; expected {want}")
    elif format == "thd" and cu_seqlens is not None:
        cu = _int_tensor(cu_seqlens, "cu_seqlens", device)
        if check and (cu.dim() != 1 or cu.numel() < 2 or cu[0].item() != 0 or cu[-1].item() != S):
            raise RopeShapeError(f"cu_seqlens {cu.tolist()} must start at 0 and end at the token count {S}")
        lengths = cu[1:] - cu[:-1]
        if check and (lengths < 0).any():
            raise RopeShapeError(f"cu_seqlens {cu.tolist()} must be non-decreasing")
        seq_of_token = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
        pos = torch.arange(S, device=device) - cu[:-1][seq_of_token]
        if offsets is not None:
            off = _int_tensor(offsets, "offsets", device)
            if off.dim() == 1:
                if off.numel() != lengths.numel():
                    raise RopeShapeError(
                        f"offsets {_shape(off)} must have one entry per sequence ({lengths.numel()} in cu_seqlens)"
                    )
                off = off[seq_of_token]
            pos = pos + off
        pos = pos.unsqueeze(0)
    else:
        pos = torch.arange(S, device=device).expand(B, S)
        if offsets is None or isinstance(offsets, int):
            # bounds known on the host: no device read (on CUDA each .item() is a sync)
            start = 0 if offsets is None else int(offsets)
            host_bounds = (start, start + S - 1)
        if offsets is not None:
            off = _int_tensor(offsets, "offsets", device)
            if off.dim() == 0:
                pos = pos + off
            elif off.dim() == 1 and off.numel() == B and format != "thd":
                pos = pos + off[:, None]
            else:
                raise RopeShapeError(f"offsets {_shape(off)} must be an int or have one entry per batch row ({B})")
    if check and pos.numel():
        lo, hi = host_bounds if host_bounds is not None else (int(pos.min().item()), None)
        if lo < 0:
            raise RopePositionError(f"a token has position {lo}; positions must be >= 0")
        if n_rows is not None:
            hi = int(pos.max().item()) if hi is None else hi
            if hi >= n_rows:
                raise RopePositionError(
                    f"a token needs table row {hi} but cos/sin have {n_rows} rows; build the table for "
                    f"positions up to {hi} (ropekit.cos_sin(spec, {hi + 1}))"
                )
    return pos


def _flatten_batched_table(cos: torch.Tensor, sin: torch.Tensor, x4: torch.Tensor, pos: torch.Tensor):
    """A per-batch table ``[B, S', R]`` becomes one table ``[B * S', R]`` with rows offset per batch."""
    B = x4.shape[0]
    if cos.shape[0] != B:
        raise RopeShapeError(f"cos {_shape(cos)} is per-batch but x has batch {B}")
    rows = cos.shape[1]
    if pos.numel() and int(pos.max().item()) >= rows:
        raise RopePositionError(f"a token needs table row {int(pos.max().item())} but cos has {rows} per batch row")
    pos = pos + torch.arange(B, device=pos.device)[:, None] * rows
    return cos.reshape(B * rows, -1), sin.reshape(B * rows, -1), pos


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------

_log = logging.getLogger("ropekit")
_WARNED: dict[str, bool] = {}


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _backend_name(x: torch.Tensor, backend: str | None) -> str:
    if backend is not None and backend not in BACKENDS:
        raise RopeShapeError(f"backend={backend!r} must be None (auto) or one of {BACKENDS}")
    if backend is not None:
        if backend == "triton":
            from .kernels.triton import interpreting

            if not _triton_available():
                raise RopeShapeError("backend='triton' needs triton: pip install 'ropekit[triton]'")
            if x.device.type != "cuda" and not interpreting():
                raise RopeShapeError(
                    f"backend='triton' needs a CUDA tensor, got one on {x.device} "
                    "(TRITON_INTERPRET=1 runs the kernel on the CPU, for testing)"
                )
        if backend == "cpu" and x.device.type != "cpu":
            raise RopeShapeError(f"backend='cpu' needs a CPU tensor, got one on {x.device}")
        return backend
    if x.device.type == "cuda":
        if _triton_available():
            return "triton"
        if not _WARNED.get("no_triton"):  # visible, once per process (not once per call)
            _log.warning("ropekit: triton is not installed; CUDA tensors use the (slower) reference rotation")
            _WARNED["no_triton"] = True
        return "reference"
    if x.device.type == "cpu":
        # compiling a variant costs seconds; below ~1M elements the reference is already fast
        return "cpu" if x.numel() >= CPU_COMPILE_MIN_NUMEL else "reference"
    return "reference"  # any other device: plain torch works everywhere


def select_backend(x: torch.Tensor, backend: str | None) -> tuple[str, KernelFn]:
    """The kernel for ``x``: ``backend`` when named, otherwise the best available for its device
    (CUDA: ``"triton"`` when importable; CPU: ``"cpu"``, the compiled path, for tensors of at
    least ``CPU_COMPILE_MIN_NUMEL`` elements and ``"reference"`` below, where compiling would cost
    more than it saves; any other device: ``"reference"``).  On CPU, a call that wants no gradient
    and is not being traced by torch.compile skips the custom-op dispatch: ``"reference"`` then
    runs as ``kernels.eager`` (the same floats in a third of the operators) and ``"cpu"`` calls
    the compiled kernel directly.

    >>> import torch
    >>> from ropekit.apply import select_backend
    >>> select_backend(torch.zeros(1 << 20), None)[0], select_backend(torch.zeros(8), None)[0]
    ('cpu', 'reference')
    """
    name = _backend_name(x, backend)
    from .kernels.ops import _single

    return name, _single(name)


def _check_values() -> bool:
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


def _prepare(tensors, names, cos, sin, *, spec, layout, format, positions, offsets, cu_seqlens, backend):
    """Checked canonical views, [B, S] positions and tables (or fixed-point frequencies)."""
    from .spec import RopeSpec

    format = _check_format(format)
    if spec is not None:
        if not isinstance(spec, RopeSpec):
            raise RopeShapeError(f"spec must be a ropekit.RopeSpec, got {type(spec).__name__}")
        if cos is not None or sin is not None:
            raise RopeShapeError("pass either cos/sin tables or spec=, not both")
        if spec.mrope_section is not None:
            raise RopeShapeError("spec= does not support multimodal (mrope) specs; build tables with ropekit.cos_sin")
        layout = spec.layout if layout is None else layout
        if normalize_layout(layout) != spec.layout:
            raise RopeShapeError(f"layout={layout!r} disagrees with spec.layout={spec.layout!r}")
        dummy = torch.empty(0, spec.n_pairs)
        for x, name in zip(tensors, names):
            _check_tables(x, dummy.to(x.device), dummy.to(x.device), name)
            if x.shape[-1] != spec.head_dim:
                raise RopeShapeError(f"{name} {_shape(x)} has head_dim {x.shape[-1]} but spec.head_dim={spec.head_dim}")
    else:
        if cos is None or sin is None:
            raise RopeShapeError("cos and sin are required (from ropekit.cos_sin), or pass spec=")
        for x, name in zip(tensors, names):
            _check_tables(x, cos, sin, name)
    layout = normalize_layout("half" if layout is None else layout)
    views = [_canonical_view(x, format, name) for x, name in zip(tensors, names)]
    x4 = views[0]
    n_rows = cos.shape[0] if spec is None and cos.dim() == 2 and _check_values() else None
    pos = resolve_positions(x4, format, positions, offsets, cu_seqlens, n_rows=n_rows, check=_check_values())
    name = _backend_name(x4, backend)
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
        cos, sin, pos = _flatten_batched_table(cos, sin, x4, pos)
    return views, layout, cos, sin, pos, name


# ---------------------------------------------------------------------------------------------
# the lean eager path: small tensors, no gradient, outside torch.compile
# ---------------------------------------------------------------------------------------------


def _lean(tensors, cos, sin, *, layout, format, positions, offsets, cu_seqlens, inplace, inverse, backend, spec):
    """The rotated tensors without the op dispatch, or None when this call needs the general
    path: anything unusual (bad arguments included, so that the general path raises its clear
    errors), a gradient, or torch.compile.  Small tensors go to ``kernels.eager`` (bit for bit
    the reference in a third of its operators, cos/sin rows gathered once for q and k, no host
    read of the positions); big ones straight to the compiled kernel."""
    if backend is not None or spec is not None or cu_seqlens is not None or torch.compiler.is_compiling():
        return None
    x = tensors[0]
    if not (
        type(cos) is torch.Tensor
        and type(sin) is torch.Tensor
        and cos.dim() == 2
        and cos.shape == sin.shape
        and cos.is_floating_point()
        and sin.is_floating_point()
        and cos.is_cpu
        and sin.is_cpu
    ):
        return None
    want = 3 if format == "thd" else 4 if format in FORMATS else -1
    grad = torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad)
    for t in tensors:
        if not (type(t) is torch.Tensor and t.dim() == want and t.dtype == x.dtype and t.is_cpu):
            return None
        grad = grad or (t.requires_grad and torch.is_grad_enabled())
    n_rows, n = cos.shape
    D = x.shape[-1]
    if (
        grad
        or not (layout is None or (isinstance(layout, str) and layout in LAYOUTS))
        or not x.is_floating_point()
        or n == 0
        or 2 * n > D
    ):
        return None
    views = [t.unsqueeze(0) if format == "thd" else t.transpose(1, 2) if format == "bhsd" else t for t in tensors]
    B, S = views[0].shape[:2]
    for v in views[1:]:
        if v.shape[:2] != (B, S) or v.shape[-1] != D:
            return None
    if positions is not None:
        if offsets is not None or type(positions) is not torch.Tensor or not positions.is_cpu:
            return None
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            return None
        if positions.shape == (S,):
            positions = positions[None]
        elif positions.shape != (B, S):  # thd: B is 1, so [1, T] is covered too
            return None
        idx = positions if positions.dtype == torch.int64 else positions.long()
    else:
        if offsets is None:
            start = 0
        elif type(offsets) is int:
            start = offsets
        else:
            return None
        if start < 0 or start + S > n_rows:
            return None
        idx = None
    interleaved = layout is not None and is_interleaved(layout)
    if x.numel() >= CPU_COMPILE_MIN_NUMEL:
        # big enough for the compiled kernel: call it directly (its own guards are the dispatch)
        from .kernels.cpu import rotate_many_cpu

        if idx is None:
            idx = torch.arange(start, start + S)[None]
        elif idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < n_rows):
            return None  # the general path names the offending position
        outs = rotate_many_cpu(
            views, cos, sin, idx.expand(B, S), interleaved=interleaved, inverse=bool(inverse), inplace=inplace
        )
    else:
        if idx is None:
            c, s = cos[None, start : start + S], sin[None, start : start + S]  # views: no gather
        else:
            flat = idx.reshape(-1)  # gathered once for q and k
            try:  # index_select checks every row is in [0, n_rows) without a host read of the positions
                c, s = cos.index_select(0, flat), sin.index_select(0, flat)
            except IndexError:
                return None  # the general path names the offending position
            c, s = c.view(*idx.shape, n), s.view(*idx.shape, n)
        math = compute_dtype(x.dtype)
        if c.dtype != math:
            c, s = c.to(math), s.to(math)
        outs = rotate_lean(views, c, s, interleaved=interleaved, inverse=bool(inverse), inplace=inplace)
    return [t if inplace else _restore(o, format) for t, o in zip(tensors, outs)]


def _guard_inplace_grad(inplace: bool, tensors) -> None:
    if inplace and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RopeShapeError("inplace=True cannot be differentiated; use inplace=False when gradients are needed")


def _table_grad_route(cos, sin, backend_name: str) -> bool:
    """Learnable tables: only the reference (plain autograd) differentiates cos/sin."""
    wants = torch.is_grad_enabled() and cos is not None and (cos.requires_grad or sin.requires_grad)
    if wants and backend_name != "reference":
        raise RopeShapeError(
            f"cos/sin require grad, which backend={backend_name!r} does not differentiate; use backend='reference'"
        )
    return wants


def _restore(y4: torch.Tensor, format: str) -> torch.Tensor:
    if format == "bhsd":
        return y4.transpose(1, 2)
    if format == "thd":
        return y4.squeeze(0)
    return y4


def _rotate(x, cos, sin, *, layout, format, positions, offsets, cu_seqlens, inplace, inverse, backend, name, spec=None):
    from .kernels import ops

    lean = _lean(
        [x],
        cos,
        sin,
        layout=layout,
        format=format,
        positions=positions,
        offsets=offsets,
        cu_seqlens=cu_seqlens,
        inplace=inplace,
        inverse=inverse,
        backend=backend,
        spec=spec,
    )
    if lean is not None:
        return lean[0]
    _guard_inplace_grad(inplace, [x])
    (x4,), layout, cos, sin, pos, impl = _prepare(
        [x],
        [name],
        cos,
        sin,
        spec=spec,
        layout=layout,
        format=format,
        positions=positions,
        offsets=offsets,
        cu_seqlens=cu_seqlens,
        backend=backend,
    )
    interleaved = layout == "interleaved"
    if _table_grad_route(cos, sin, impl):
        y4 = rotate_reference(x4, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)
        return x if inplace else _restore(y4, format)
    if inplace:
        ops.rope_(x4, cos, sin, pos, interleaved, inverse, impl)
        return x
    return _restore(ops.rope(x4, cos, sin, pos, interleaved, inverse, impl), format)


def apply_rope(
    x: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    layout: str | None = None,
    format: str = "bshd",
    positions=None,
    inplace: bool = False,
    *,
    offsets=None,
    cu_seqlens=None,
    inverse: bool = False,
    backend: str | None = None,
    spec=None,
) -> torch.Tensor:
    """Rotate ``x`` by compact ``cos``/``sin`` tables (from ``ropekit.cos_sin``).

    layout: ``"half"`` (NeoX/transformers, the default) or ``"interleaved"`` (GPT-J/Meta);
    rotary_dim is ``2 * cos.shape[-1]`` and the remaining dims of each head pass through untouched.
    format: ``"bshd"`` (default), ``"bhsd"`` (transformers) or ``"thd"`` (packed, with cu_seqlens).
    positions: when given, ``cos``/``sin`` are full tables indexed by it (``[S]``, ``[B, S]`` or
    ``[T]``); when absent, row ``i + offset`` belongs to sequence index ``i``.
    offsets: int or one per batch row / sequence (KV-cache decoding, context-parallel shards).
    inverse: rotate backwards (undoes the forward rotation exactly, up to rounding; with an
    attention factor baked into the tables it is the transpose, which scales by it again).
    backend: ``None`` picks by device (CUDA: triton; CPU: the compiled cpu path), or force
    ``"reference"`` | ``"cpu"`` | ``"triton"``.
    spec: instead of tables, a ``RopeSpec``: angles come from its fp64 frequencies for exactly the
    tokens' positions (triton computes them inside the kernel, with no table at all, to within
    1 fp32 ulp; the other backends build exact fp64 rows for those tokens).  ``layout`` then
    defaults to ``spec.layout``.  spec= prepares frequencies on the host, so it is an eager-mode
    form: inside ``torch.compile`` pass tables.
    Math in at least float32; the result has x's dtype.  Works with autograd (out of place) and,
    with tables, under ``torch.compile(fullgraph=True)`` (one custom op, no graph break).

    >>> import ropekit as rk, torch
    >>> spec = rk.RopeSpec(head_dim=8)
    >>> x = torch.randn(1, 4, 2, 8)
    >>> cos, sin = rk.cos_sin(spec, 4)
    >>> torch.allclose(rk.apply_rope(x, spec=spec), rk.apply_rope(x, cos, sin), atol=1e-6)
    True
    """
    return _rotate(
        x,
        cos,
        sin,
        layout=layout,
        format=format,
        positions=positions,
        offsets=offsets,
        cu_seqlens=cu_seqlens,
        inplace=inplace,
        inverse=inverse,
        backend=backend,
        name="x",
        spec=spec,
    )


def _check_qk(q, k, format):
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise RopeShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() == k.dim() and (_token_dims(q, format) != _token_dims(k, format) or q.shape[-1] != k.shape[-1]):
        raise RopeShapeError(
            f"q {_shape(q)} and k {_shape(k)} must agree on batch, sequence and head_dim (format={format!r})"
        )


def _rotate_qk(
    q, k, cos, sin, *, names=("q", "k"), layout, format, positions, offsets, cu_seqlens, inplace, inverse, backend, spec
):
    from .kernels import ops

    lean = _lean(
        [q, k],
        cos,
        sin,
        layout=layout,
        format=format,
        positions=positions,
        offsets=offsets,
        cu_seqlens=cu_seqlens,
        inplace=inplace,
        inverse=inverse,
        backend=backend,
        spec=spec,
    )
    if lean is not None:
        return lean[0], lean[1]
    _guard_inplace_grad(inplace, [q, k])
    (q4, k4), layout, cos, sin, pos, impl = _prepare(
        [q, k],
        list(names),
        cos,
        sin,
        spec=spec,
        layout=layout,
        format=format,
        positions=positions,
        offsets=offsets,
        cu_seqlens=cu_seqlens,
        backend=backend,
    )
    if q4.shape[:2] != k4.shape[:2]:
        raise RopeShapeError(f"q {_shape(q)} and k {_shape(k)} must agree on batch and sequence (format={format!r})")
    if q4.dtype != k4.dtype:
        raise RopeShapeError(f"q has dtype {q4.dtype} but k has {k4.dtype}; rotate them in one dtype")
    interleaved = layout == "interleaved"
    if _table_grad_route(cos, sin, impl):
        kw = dict(interleaved=interleaved, inverse=inverse, inplace=inplace)
        yq, yk = rotate_reference(q4, cos, sin, pos, **kw), rotate_reference(k4, cos, sin, pos, **kw)
        return (q, k) if inplace else (_restore(yq, format), _restore(yk, format))
    if inplace:
        ops.rope_qk_(q4, k4, cos, sin, pos, interleaved, inverse, impl)
        return q, k
    yq, yk = ops.rope_qk(q4, k4, cos, sin, pos, interleaved, inverse, impl)
    return _restore(yq, format), _restore(yk, format)


def apply_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    layout: str | None = None,
    format: str = "bshd",
    positions=None,
    inplace: bool = False,
    *,
    offsets=None,
    cu_seqlens=None,
    inverse: bool = False,
    backend: str | None = None,
    spec=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rope`` to queries and keys with the same positions (head counts may differ: GQA).
    On triton both are rotated in one launch (each token's cos/sin loaded once for all heads).

    >>> import ropekit as rk, torch
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=64), 8)
    >>> q, k = rk.apply_rope_qk(torch.randn(1, 8, 32, 64), torch.randn(1, 8, 8, 64), cos, sin)
    >>> q.shape[2], k.shape[2]
    (32, 8)
    """
    _check_qk(q, k, format)
    return _rotate_qk(
        q,
        k,
        cos,
        sin,
        layout=layout,
        format=format,
        positions=positions,
        offsets=offsets,
        cu_seqlens=cu_seqlens,
        inplace=inplace,
        inverse=inverse,
        backend=backend,
        spec=spec,
    )


def apply_rope_qkv(
    qkv: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    n_q_heads: int | None = None,
    n_kv_heads: int | None = None,
    layout: str | None = None,
    format: str = "bshd",
    positions=None,
    inplace: bool = False,
    *,
    offsets=None,
    cu_seqlens=None,
    inverse: bool = False,
    backend: str | None = None,
    spec=None,
) -> torch.Tensor:
    """Rotate the q and k heads of a packed projection; v passes through.

    qkv: ``[B, S, Hq + 2 Hkv, D]`` (or ``[T, Hq + 2 Hkv, D]`` for thd) or its fused-projection
    form with the heads flattened, ``[B, S, (Hq + 2 Hkv) * D]``.  Heads are ordered q, k, v, so
    the q and k heads are one contiguous head range: one kernel launch rotates them all.
    Returns a tensor shaped like ``qkv`` (in place: ``qkv`` itself, v untouched; out of place:
    a new tensor with v copied).  format ``"bhsd"`` is not a packed layout and is refused.

    >>> import ropekit as rk, torch
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=8), 5)
    >>> qkv = torch.randn(2, 5, (4 + 2 * 2) * 8)
    >>> out = rk.apply_rope_qkv(qkv, cos, sin, n_q_heads=4, n_kv_heads=2)
    >>> q, k = rk.apply_rope_qk(qkv.view(2, 5, 8, 8)[:, :, :4], qkv.view(2, 5, 8, 8)[:, :, 4:6], cos, sin)
    >>> torch.equal(out.view(2, 5, 8, 8)[:, :, :6], torch.cat([q, k], 2)), torch.equal(out[..., 48:], qkv[..., 48:])
    (True, True)
    """
    if not isinstance(qkv, torch.Tensor):
        raise RopeShapeError(f"qkv must be a torch.Tensor, got {type(qkv).__name__}")
    for label, n in (("n_q_heads", n_q_heads), ("n_kv_heads", n_kv_heads)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RopeShapeError(f"{label}={n!r} must be a positive int")
    if format not in ("bshd", "thd"):
        raise RopeShapeError(f"format={format!r}: packed qkv supports 'bshd' or 'thd'")
    heads = n_q_heads + 2 * n_kv_heads
    token_dims = 2 if format == "bshd" else 1
    if qkv.dim() == token_dims + 1:  # heads flattened into the last dim
        if qkv.shape[-1] % heads:
            raise RopeShapeError(
                f"qkv {_shape(qkv)}: last dim {qkv.shape[-1]} is not divisible by n_q_heads + 2 * n_kv_heads = {heads}"
            )
        packed = qkv.unflatten(-1, (heads, qkv.shape[-1] // heads))
    elif qkv.dim() == token_dims + 2:
        packed = qkv
        if packed.shape[-2] != heads:
            raise RopeShapeError(
                f"qkv {_shape(qkv)} has {packed.shape[-2]} heads; n_q_heads + 2 * n_kv_heads = {heads}"
            )
    else:
        raise RopeShapeError(
            f"qkv {_shape(qkv)} has {qkv.dim()} dims; format={format!r} needs {token_dims + 1} or {token_dims + 2}"
        )
    out = packed if inplace else packed.clone()
    # q and k are adjacent heads: one head range, one launch, rotated in the output buffer
    rotate = out[..., : n_q_heads + n_kv_heads, :]
    if inplace or not (torch.is_grad_enabled() and qkv.requires_grad):
        _rotate(
            rotate,
            cos,
            sin,
            layout=layout,
            format=format,
            positions=positions,
            offsets=offsets,
            cu_seqlens=cu_seqlens,
            inplace=True,
            inverse=inverse,
            backend=backend,
            name="qkv",
            spec=spec,
        )
        return qkv if inplace else out.reshape(qkv.shape)
    # differentiable: rotate out of place and assemble (autograd sees the custom op)
    qk = _rotate(
        packed[..., : n_q_heads + n_kv_heads, :],
        cos,
        sin,
        layout=layout,
        format=format,
        positions=positions,
        offsets=offsets,
        cu_seqlens=cu_seqlens,
        inplace=False,
        inverse=inverse,
        backend=backend,
        name="qkv",
        spec=spec,
    )
    return torch.cat([qk, packed[..., n_q_heads + n_kv_heads :, :]], -2).reshape(qkv.shape)
