"""ropekit stand-ins for the apply functions transformers families call, one per calling convention.

Each builder runs once, at patch time, and returns a function with the family function's own
signature that rotates with ``ropekit.apply_rope`` / ``apply_rope_qk``.  Everything that depends on
the family is decided there: the layout, how to take one column per pair from the family's table
form (a slice: ``[..., :r/2]`` of ``cat((c, c))``, ``[..., ::2]`` of ``repeat_interleave``), whether
the legacy convention indexes the table by ``position_ids``, which axis owns each mRoPE column,
DeepSeek's interleave-in / half-out reordering, and the direction (``inverse``: NanoChat's apply
turns its +angle tables by -angle, which is ropekit's inverse rotation).  Nothing on the hot path inspects values: no
``torch.equal``, no host read, no graph break.

Conventions (``Convention``):

* ``"qk"``: ``f(q, k, cos, sin, [position_ids], unsqueeze_dim=1)``; ``indexed`` for the releases
  whose rotary module returns the whole table (``forward(x, seq_len=)``) and whose apply function
  gathers rows by ``position_ids`` (4.37 everywhere, 4.38-4.45 in most families);
* ``"qk_half_out"``: DeepSeek-V3's ``apply_rotary_pos_emb_interleave``: pairs (2i, 2i+1) in, the
  result reordered to the half layout (evens then odds);
* ``"mrope"``: ``apply_multimodal_rotary_pos_emb(q, k, cos, sin, mrope_section, unsqueeze_dim=1)``
  with one table per position axis;
* ``"single_sin_cos"``: GPT-J / CodeGen ``f(tensor, sin, cos)``, one tensor ``[B, S, H, D]``;
* ``"complex"``: DeepSeek-V2 ``apply_rotary_emb(xq, xk, freqs_cis)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..apply import apply_rope, apply_rope_qk
from ..errors import RopeShapeError
from ..spec import normalize_layout

__all__ = ["Convention", "CONVENTIONS", "build_rotator"]

CONVENTIONS = ("qk", "qk_half_out", "mrope", "single_sin_cos", "complex")


@dataclass(frozen=True)
class Convention:
    """Everything a stand-in needs to know, fixed at patch time."""

    kind: str
    layout: str
    duplicate: str = "cat"  # the table form the rotary module hands over
    indexed: bool = False  # legacy: cos/sin are whole tables, gathered by position_ids
    mrope_section: tuple[int, ...] | None = None
    backend: str | None = None
    inverse: bool = False  # the family function turns by -angle of its tables (NanoChat)

    def __post_init__(self):
        if self.kind not in CONVENTIONS:
            raise RopeShapeError(f"convention kind={self.kind!r} must be one of {CONVENTIONS}")
        object.__setattr__(self, "layout", normalize_layout(self.layout))


def _compactor(duplicate: str):
    """One column per pair out of the family's duplicated table: a view, chosen once."""
    if duplicate == "cat":
        return lambda t: t[..., : t.shape[-1] // 2]
    if duplicate == "repeat":
        return lambda t: t[..., ::2]
    raise RopeShapeError(f"duplicate={duplicate!r} is not a duplicated (cat / repeat) table form")


def _per_forward(compact):
    """``_shared(compact(cos), compact(sin))``, remembered for the last (cos, sin): every attention
    layer of one forward is handed the same two tensors, and the four views cost more than the
    rest of a one-token call's bookkeeping.  A new tensor, or an in-place change of the old one
    (its version counter), makes new views; while tracing nothing is remembered."""
    last = [None]

    def tables(cos, sin):
        if torch.compiler.is_compiling():
            return _shared(compact(cos), compact(sin))
        hit = last[0]
        if hit is not None and hit[0] is cos and hit[1] is sin and hit[2] == (cos._version, sin._version):
            return hit[3]
        pair = _shared(compact(cos), compact(sin))
        last[0] = (cos, sin, (cos._version, sin._version), pair)
        return pair

    return tables


def _format(unsqueeze_dim) -> str:
    # transformers unsqueezes cos [B, S, D] at the heads axis: 1 for [B, H, S, D], 2 for [B, S, H, D]
    if unsqueeze_dim == 1:
        return "bhsd"
    if unsqueeze_dim == 2:
        return "bshd"
    raise RopeShapeError(f"unsqueeze_dim={unsqueeze_dim!r}: ropekit.hf.patch handles 1 (bhsd) and 2 (bshd)")


def _shared(cos: torch.Tensor, sin: torch.Tensor):
    # a batch of one row of angles per sequence index is one table shared by the batch
    if cos.dim() == 3 and cos.shape[0] == 1:
        return cos[0], sin[0]
    return cos, sin


def _half_out(x: torch.Tensor) -> torch.Tensor:
    """Reorder rotated interleaved pairs (2i, 2i+1) to the half layout (i, i + r/2) on the rotary dims."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


def build_rotator(conv: Convention):
    """The stand-in for one family function under ``conv`` (see the module docstring)."""
    builders = {
        "qk": _qk,
        "qk_half_out": _qk_half_out,
        "mrope": _mrope,
        "single_sin_cos": _single_sin_cos,
        "complex": _complex,
    }
    return builders[conv.kind](conv)


def _rotate_qk(q, k, cos, sin, unsqueeze_dim, *, layout: str, backend: str | None, inverse: bool = False):
    """What every q/k stand-in ends with, once it has one column per pair of each table."""
    c, s = _shared(cos, sin)
    return _apply_qk(q, k, c, s, unsqueeze_dim, layout=layout, backend=backend, inverse=inverse)


def _apply_qk(q, k, c, s, unsqueeze_dim, *, layout: str, backend: str | None, inverse: bool):
    fmt = _format(unsqueeze_dim)
    return apply_rope_qk(q, k, c, s, layout=layout, format=fmt, backend=backend, inverse=inverse)


def _qk(conv: Convention):
    compact = _compactor(conv.duplicate)
    layout, backend, inverse = conv.layout, conv.backend, conv.inverse

    if conv.indexed:

        def rotate_indexed(q, k, cos, sin, position_ids, unsqueeze_dim=1):
            # the legacy table [S_max, D]: gather each token's row (what cos[position_ids] did)
            c, s = compact(cos)[position_ids], compact(sin)[position_ids]
            return _rotate_qk(q, k, c, s, unsqueeze_dim, layout=layout, backend=backend, inverse=inverse)

        return rotate_indexed

    tables = _per_forward(compact)

    def rotate(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        c, s = tables(cos, sin)
        return _apply_qk(q, k, c, s, unsqueeze_dim, layout=layout, backend=backend, inverse=inverse)

    return rotate


def _qk_half_out(conv: Convention):
    compact = _compactor(conv.duplicate)
    backend, inverse = conv.backend, conv.inverse

    def rotate_interleave_half_out(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        c, s = compact(cos), compact(sin)
        q2, k2 = _rotate_qk(q, k, c, s, unsqueeze_dim, layout="interleaved", backend=backend, inverse=inverse)
        return _half_out(q2), _half_out(k2)

    return rotate_interleave_half_out


def _mrope(conv: Convention):
    compact = _compactor(conv.duplicate)
    layout, backend, inverse = conv.layout, conv.backend, conv.inverse
    if conv.mrope_section is None:
        raise RopeShapeError("the mrope convention needs the spec's mrope_section")
    # (axis, first column, end column) per section: T, H, W, T, ... as transformers' i % 3
    segments, start = [], 0
    for i, width in enumerate(conv.mrope_section):
        segments.append((i % 3, start, start + width))
        start += width

    def select(t):
        t = compact(t)  # [3, B, S, r/2]
        return torch.cat([t[axis, ..., a:b] for axis, a, b in segments], dim=-1)

    def rotate_mrope(q, k, cos, sin, mrope_section=None, unsqueeze_dim=1):
        c, s = select(cos), select(sin)
        return _rotate_qk(q, k, c, s, unsqueeze_dim, layout=layout, backend=backend, inverse=inverse)

    return rotate_mrope


def _single_sin_cos(conv: Convention):
    layout, backend, inverse = conv.layout, conv.backend, conv.inverse

    def rotate_one(tensor, sin, cos):
        # GPT-J: tensor [B, S, H, D], sin/cos [B, S, r/2] already one column per pair
        c, s = _shared(cos, sin)
        return apply_rope(tensor, c, s, layout=layout, format="bshd", backend=backend, inverse=inverse)

    return rotate_one


def _complex(conv: Convention):
    layout, backend, inverse = conv.layout, conv.backend, conv.inverse

    def rotate_complex(xq, xk, freqs_cis):
        # DeepSeek-V2: q/k [B, H, S, D] in pairs (2i, 2i+1); freqs_cis [B, S, r/2] complex, factor included
        c, s = _shared(freqs_cis.real, freqs_cis.imag)
        c, s = c.to(xq.device), s.to(xq.device)
        return apply_rope_qk(xq, xk, c, s, layout=layout, format="bhsd", backend=backend, inverse=inverse)

    return rotate_complex
