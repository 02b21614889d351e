"""The zoo: rotary embeddings as they exist in the wild, written by us from the math.

Each entry is a black-box ``fn(x[n, head_dim], positions[n]) -> rotated x`` with the arithmetic of
the convention it stands for (float32 frequencies and angles, the way those code bases compute
them), so that ``ropekit doctor`` can fingerprint them and show how they differ.  Nothing here is
copied from the projects named; the docstrings say which convention each one reproduces.

The functions take and return any float dtype; the math runs in float32 (as the originals do when
the model is in bf16: tables in float32, cast to the activation dtype) and the result has x's dtype.

>>> import torch, ropekit as rk
>>> entry = rk.zoo.ZOO["meta_complex"]
>>> entry.head_dim, entry.fn(torch.eye(entry.head_dim)[:2], torch.tensor([0, 0])).shape
(128, torch.Size([2, 128]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "ZooEntry",
    "ZOO",
    "REFERENCE",
    "hf_rotate_half",
    "meta_complex",
    "gptj_rotate_every_two",
    "neox_partial",
    "glm_half_head_interleaved",
    "minimind_complex",
    "minimind_rotate_half",
    "llama31_scaled",
    "halved_rotary_bug",
    "offset_by_one",
    "bf16_inv_freq",
    "rotate_half_computed_in",
    "neox_bf16_inside",
    "fp16_inside",
    "autocast_matmul",
]

RopeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _inv_freq_f32(rotary_dim: int, base: float) -> torch.Tensor:
    # the expression every one of these code bases uses: float32 exponent, Python-float base
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def _angles_f32(positions: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    # float32 positions times float32 frequencies: [n, rotary_dim / 2]
    return positions.to(torch.float32)[:, None] * inv[None, :]


def _rotate_half_tail(x: torch.Tensor, angles: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """y = x * cos + rotate_half(x) * sin on the first rotary_dim dims (pairs i, i + r/2)."""
    xf = x.float()
    rot, tail = xf[:, :rotary_dim], xf[:, rotary_dim:]
    emb = torch.cat((angles, angles), dim=-1)
    x1, x2 = rot[:, : rotary_dim // 2], rot[:, rotary_dim // 2 :]
    rotated = rot * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()
    return torch.cat((rotated, tail), dim=-1).to(x.dtype)


def _complex_interleaved(x: torch.Tensor, angles: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Adjacent dims (2i, 2i+1) as the complex number x[2i] + i x[2i+1], times e^{i angle}."""
    xf = x.float()
    rot, tail = xf[:, :rotary_dim], xf[:, rotary_dim:]
    z = torch.view_as_complex(rot.reshape(rot.shape[0], -1, 2).contiguous())
    cis = torch.polar(torch.ones_like(angles), angles)
    rotated = torch.view_as_real(z * cis).flatten(1)
    return torch.cat((rotated, tail), dim=-1).to(x.dtype)


def _rotate_every_two_tail(x: torch.Tensor, angles: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """y = x * cos + rotate_every_two(x) * sin with cos/sin repeated per adjacent pair."""
    xf = x.float()
    rot, tail = xf[:, :rotary_dim], xf[:, rotary_dim:]
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = angles.sin().repeat_interleave(2, dim=-1)
    x1, x2 = rot[:, 0::2], rot[:, 1::2]
    every_two = torch.stack((-x2, x1), dim=-1).flatten(1)
    return torch.cat((rot * cos + every_two * sin, tail), dim=-1).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# the conventions
# ---------------------------------------------------------------------------------------------


def hf_rotate_half(head_dim: int = 128, base: float = 10000.0, rotary_dim: int | None = None) -> RopeFn:
    """transformers' Llama: ``q * cos + rotate_half(q) * sin`` with ``cos = cat(cos, cos)``; pairs
    (i, i + r/2) ("half" layout), float32 ``inv_freq`` and angles."""
    r = head_dim if rotary_dim is None else rotary_dim
    inv = _inv_freq_f32(r, base)

    def fn(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return _rotate_half_tail(x, _angles_f32(positions, inv), r)

    return fn


def meta_complex(head_dim: int = 128, base: float = 10000.0) -> RopeFn:
    """Meta's Llama reference code: ``freqs_cis = polar(1, outer(t, freqs))``; q viewed as complex
    numbers of *adjacent* dims (``view_as_complex(q.reshape(..., -1, 2))``) and multiplied.  Pairs
    (2i, 2i+1): the "interleaved" layout.  Meta checkpoints store q/k rows in this order, which is
    why transformers' converter permutes them."""
    inv = _inv_freq_f32(head_dim, base)

    def fn(x, positions):
        return _complex_interleaved(x, _angles_f32(positions, inv), head_dim)

    return fn


def gptj_rotate_every_two(head_dim: int = 256, rotary_dim: int = 64, base: float = 10000.0) -> RopeFn:
    """GPT-J: ``rotate_every_two`` (``stack((-x[1::2], x[::2]))``) with sin/cos repeated per pair,
    only the first ``rotary_dim=64`` of 256 dims rotate; interleaved layout."""
    inv = _inv_freq_f32(rotary_dim, base)

    def fn(x, positions):
        return _rotate_every_two_tail(x, _angles_f32(positions, inv), rotary_dim)

    return fn


def neox_partial(head_dim: int = 96, rotary_pct: float = 0.25, base: float = 10000.0) -> RopeFn:
    """GPT-NeoX-20B: ``rotary_ndims = int(head_dim * rotary_pct)`` (24 of 96) in the half layout
    (NeoX is where rotate_half comes from); the remaining dims pass through."""
    return hf_rotate_half(head_dim, base, rotary_dim=int(head_dim * rotary_pct))


def glm_half_head_interleaved(head_dim: int = 128, rotary_dim: int | None = None, base: float = 10000.0) -> RopeFn:
    """ChatGLM2/3 (and GLM-4): only the first half of each head rotates (``rotary_dim = head_dim / 2``)
    and inside it adjacent dims pair up (``x.reshape(..., r/2, 2)``): interleaved, partial."""
    r = head_dim // 2 if rotary_dim is None else rotary_dim
    inv = _inv_freq_f32(r, base)

    def fn(x, positions):
        return _complex_interleaved(x, _angles_f32(positions, inv), r)

    return fn


def minimind_complex(head_dim: int = 64, base: float = 1e4) -> RopeFn:
    """Minimind's first RoPE (``precompute_pos_cis`` + ``view_as_complex``): interleaved pairs,
    theta 1e4 — Meta-style complex numbers."""
    return meta_complex(head_dim, base)


def minimind_rotate_half(head_dim: int = 64, base: float = 1e6) -> RopeFn:
    """Minimind's later RoPE (``precompute_freqs_cis`` returning cos/sin + ``rotate_half``): half
    layout and ``rope_theta`` 1e6.  Weights trained with the complex version need the q/k row
    permutation (and the old base) to run here."""
    return hf_rotate_half(head_dim, base)


def llama31_scaled(
    head_dim: int = 128,
    base: float = 500000.0,
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_position_embeddings: int = 8192,
) -> RopeFn:
    """Llama 3.1 as transformers runs it (half layout): wavelengths shorter than
    ``8192 / high_freq_factor`` keep their frequency, those longer than ``8192 / low_freq_factor``
    are divided by ``factor=8``, and the band between blends the two linearly in ``8192 / wavelength``."""
    inv = _inv_freq_f32(head_dim, base)
    wavelen = 2 * math.pi / inv
    low_wavelen = original_max_position_embeddings / low_freq_factor
    high_wavelen = original_max_position_embeddings / high_freq_factor
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv / factor + smooth * inv
    inv = torch.where(wavelen > low_wavelen, inv / factor, torch.where(wavelen < high_wavelen, inv, blended))

    def fn(x, positions):
        return _rotate_half_tail(x, _angles_f32(positions, inv), head_dim)

    return fn


def halved_rotary_bug(
    head_dim: int = 128, partial_rotary_factor: float = 0.5, layer: int = 1, base: float = 10000.0
) -> RopeFn:
    """A porting bug seen in the wild: each attention layer did
    ``config.rotary_dim = int(config.rotary_dim * partial_rotary_factor)`` on the *shared* config,
    so layer k rotates ``head_dim * factor ** (k + 1)`` dims.  Layer 1 of a 128-dim head meant to
    rotate 64 rotates 32 (half layout)."""
    r = head_dim
    for _ in range(layer + 1):
        r = int(r * partial_rotary_factor)
    return hf_rotate_half(head_dim, base, rotary_dim=r)


def offset_by_one(head_dim: int = 128, base: float = 10000.0) -> RopeFn:
    """transformers' rotate_half, but positions start at 1 (an off-by-one in position_ids or a
    KV-cache offset counted twice): every angle is ``theta * (p + 1)``."""
    inner = hf_rotate_half(head_dim, base)

    def fn(x, positions):
        return inner(x, positions + 1)

    return fn


def bf16_inv_freq(head_dim: int = 128, base: float = 10000.0) -> RopeFn:
    """transformers' rotate_half after ``model.to(torch.bfloat16)`` cast the ``inv_freq`` buffer:
    the frequencies are rounded to bfloat16 (up to 0.4% off) and cast back to float32 for the
    angles, which are then wrong by hundreds of radians at long positions."""
    inv = _inv_freq_f32(head_dim, base).to(torch.bfloat16).float()

    def fn(x, positions):
        return _rotate_half_tail(x, _angles_f32(positions, inv), head_dim)

    return fn


def rotate_half_computed_in(
    head_dim: int, rotary_dim: int | None = None, base: float = 10000.0, dtype: torch.dtype = torch.bfloat16
) -> RopeFn:
    """rotate_half whose arithmetic runs in ``dtype`` inside a wider interface: x and the float32
    cos/sin cast to ``dtype``, products and sums in ``dtype``, the result cast back to x's dtype (a
    ``.to(torch.bfloat16)`` inside a float32 model)."""
    r = head_dim if rotary_dim is None else rotary_dim
    inv = _inv_freq_f32(r, base)

    def fn(x, positions):
        ang = _angles_f32(positions, inv)
        emb = torch.cat((ang, ang), dim=-1)
        low = x.to(dtype)
        rot, tail = low[:, :r], low[:, r:]
        x1, x2 = rot[:, : r // 2], rot[:, r // 2 :]
        rotated = rot * emb.cos().to(dtype) + torch.cat((-x2, x1), dim=-1) * emb.sin().to(dtype)
        return torch.cat((rotated, tail), dim=-1).to(x.dtype)

    return fn


def neox_bf16_inside(head_dim: int = 256, rotary_pct: float = 0.25, base: float = 10000.0) -> RopeFn:
    """NeoX-style partial rotary (64 of 256 dims, half layout) computed in bfloat16 and returned as
    float32: its outputs carry 8 significand bits whatever dtype they come back in."""
    return rotate_half_computed_in(head_dim, int(head_dim * rotary_pct), base, torch.bfloat16)


def fp16_inside(head_dim: int = 128, base: float = 10000.0) -> RopeFn:
    """transformers' rotate_half computed in float16 inside a float32 interface (11 significand bits)."""
    return rotate_half_computed_in(head_dim, None, base, torch.float16)


def autocast_matmul(head_dim: int = 64, base: float = 10000.0) -> RopeFn:
    """A RoPE written as a matrix product (one 2x2-block rotation matrix per token, half layout) run
    under ``torch.autocast("cpu", dtype=torch.bfloat16)``: autocast runs the product in bfloat16;
    the caller gets float32 back."""
    inv = _inv_freq_f32(head_dim, base)
    n = head_dim // 2
    i = torch.arange(n)

    def fn(x, positions):
        ang = _angles_f32(positions, inv)
        c, s = ang.cos(), ang.sin()
        R = torch.zeros(x.shape[0], head_dim, head_dim)
        R[:, i, i], R[:, i + n, i + n], R[:, i, i + n], R[:, i + n, i] = c, c, -s, s
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.bmm(R, x.float()[:, :, None])[:, :, 0]
        return y.to(x.dtype)

    return fn


# ---------------------------------------------------------------------------------------------
# the catalogue
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    """One convention: its name, the black-box ``fn``, the head size it is built for, and what it is."""

    name: str
    fn: RopeFn = field(repr=False)
    head_dim: int
    convention: str


def _entry(name: str, factory: Callable[..., RopeFn], head_dim: int, **kwargs) -> ZooEntry:
    doc = (factory.__doc__ or "").strip().split("\n\n")[0]
    return ZooEntry(name, factory(head_dim=head_dim, **kwargs), head_dim, " ".join(doc.split()))


#: name -> entry, in the order the doctor lists them; ``REFERENCE`` is what verdicts compare against
ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        _entry("hf_rotate_half", hf_rotate_half, 128),
        _entry("meta_complex", meta_complex, 128),
        _entry("gptj", gptj_rotate_every_two, 256),
        _entry("neox_partial", neox_partial, 96),
        _entry("glm", glm_half_head_interleaved, 128),
        _entry("minimind_complex", minimind_complex, 64),
        _entry("minimind_rotate_half", minimind_rotate_half, 64),
        _entry("llama31_scaled", llama31_scaled, 128),
        _entry("halved_rotary_bug", halved_rotary_bug, 128),
        _entry("offset_by_one", offset_by_one, 128),
        _entry("bf16_inv_freq", bf16_inv_freq, 128),
        _entry("neox_bf16_inside", neox_bf16_inside, 256),
        _entry("fp16_inside", fp16_inside, 128),
        _entry("autocast_matmul", autocast_matmul, 64),
    )
}

#: the verdict column compares every entry against transformers' Llama RoPE of the same head size
REFERENCE = hf_rotate_half
