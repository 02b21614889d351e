"""2-D image rotaries: how a family's module is called on a grid of patches, and which positions it uses.

Four transformers families (5.24) rotate image patches, not tokens, and each is an axial RoPE
(``RopeSpec.axial``): the pairs are split between the two axes of the patch grid, and each axis
turns its pairs by a frequency ladder of its own.  What differs is what a position is, so ropekit's
positions for them are a ``[2, N]`` tensor, one row per axis, holding what the module multiplies its
frequencies by:

* MLCD and SAM 3's ViT: the position ids the module is called with (``[N, 2]``; ropekit's is the
  transpose);
* EfficientLoFTR: (row, column) of its aggregated feature grid, counted from 1 (its forward takes
  the feature map and builds the grid itself);
* EoMT's DINOv3: ``2 * pi`` times the patch-centre coordinates in [-1, 1] (its forward takes the
  pixel values; the coordinates are its ``get_patches_center_coordinates``).

Most vision towers of vision-language models (Qwen2-VL, GLM-4V, Kimi, ... in 5.24) have the same
kind of module as MLCD, called with ``[N, 2]`` position ids; it is found by its name and its
``recomposition_frequencies`` (``adapter_of``).  Three towers no RopeSpec describes are refused with
the reason (``refusal_of``).

``measured`` calls the module through ``call_on_grid`` and measures the spec from its tables; the
axis of each pair is read from the grid itself (``axes_on_grid``): a column that follows an axis is
the same for every patch with the same position on that axis.

>>> import torch
>>> pos = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]])
>>> axes_on_grid(pos, torch.ones(4, 2), torch.tensor([[1., 5.], [1., 6.], [2., 5.], [2., 6.]]))
(0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import RopeConfigError, RopeError
from ..spec import RopeSpec

__all__ = ["ImageRotary", "adapter_of", "refusal_of", "call_on_grid", "axes_on_grid", "image_spec", "GRID"]

#: rows x columns of the probe grid: different sizes, so that a swapped axis shows, and columns
#: far enough apart that a wrong frequency shows
GRID = (6, 41)


@dataclass(frozen=True)
class ImageRotary:
    """How to probe one family's image rotary module.

    positions: what ropekit's positions are for this family (for people: it goes into spec.source).
    call: ``(modeling module, rotary module, rows, cols) -> (positions [2, N], cos, sin)``.
    apply: the names of the family's q/k apply function (the first the modeling module has).
    heads_last: the apply function takes q as ``[b, s, h, d]`` and cos/sin as ``[s, d]`` (None: try
      both, the first that runs; the tables and scores then judge the reading either way).
    """

    positions: str
    call: Callable
    apply: tuple[str, ...] = ("apply_rotary_pos_emb",)
    heads_last: bool | None = False


def _grid(rows: int, cols: int, start: int = 0):
    import torch

    r = torch.arange(start, start + rows).repeat_interleave(cols)
    c = torch.arange(start, start + cols).repeat(rows)
    return torch.stack([r, c])


def _by_position_ids(modeling, module, rows, cols):
    import torch

    pos = _grid(rows, cols)
    cos, sin = module(torch.zeros(1), pos.T)  # x only gives the device
    return pos, cos, sin


def _efficientloftr(modeling, module, rows, cols):
    import torch

    k, s = module.config.q_aggregation_kernel_size, module.config.q_aggregation_stride
    features = torch.zeros(1, 1, (rows - 1) * s + k, (cols - 1) * s + k)  # its grid is rows x cols
    cos, sin = module(features)
    return _grid(rows, cols, start=1), cos, sin


def _dinov3(modeling, module, rows, cols):
    import torch

    patch = module.config.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    cos, sin = module(torch.zeros(1, 1, rows * ph, cols * pw))
    coords = modeling.get_patches_center_coordinates(rows, cols, dtype=torch.float32, device=torch.device("cpu"))
    return (2 * math.pi * coords).T, cos, sin  # the module's own float32 product, operation for operation


_POSITION_IDS = "the position ids it is called with, transposed to [2, N] (row 0 = its first column)"
_ADAPTERS = {
    "MLCDRotaryEmbedding": ImageRotary(_POSITION_IDS, _by_position_ids, ("apply_rotary_pos_emb_vision",), True),
    "Sam3ViTRotaryEmbedding": ImageRotary(_POSITION_IDS, _by_position_ids, ("apply_rotary_pos_emb_2d",)),
    "EfficientLoFTRRotaryEmbedding": ImageRotary(
        "the (row, column) of its aggregated feature grid, counted from 1, as [2, N]", _efficientloftr
    ),
    "EomtDinov3RotaryEmbedding": ImageRotary(
        "2*pi times its patch-centre coordinates in [-1, 1] (get_patches_center_coordinates), as [2, N]", _dinov3
    ),
}


#: a vision tower's axial rotary (Qwen2-VL's and most others in 5.24): the same [N, 2] position ids
#: as MLCD's, which its ``recomposition_frequencies`` splits into the height and width parts
_VISION_APPLY = (
    "apply_rotary_pos_emb_vision",
    "apply_rotary_pos_emb_2d",
    "apply_rotary_pos_emb_2d_self_attn",
    "apply_rotary_pos_emb",
)
_VISION_TOWER = ImageRotary(_POSITION_IDS, _by_position_ids, _VISION_APPLY, None)


#: tower rotaries no RopeSpec describes, and why (read from their modeling code, transformers 5.24)
_REFUSED = {
    "Gemma4VisionRotaryEmbedding": "each axis's part of the head is rotated as a half-layout RoPE of its own "
    "(apply_multidimensional_rope: pairs (i, i + r/4) inside each part), a pairing no RopeSpec layout has",
    "PixtralVisionRotaryEmbedding": "the width axis turns at the odd entries of one head_dim ladder "
    "(inv_freq[1::2] = base ** (-(k + 1/2) / n_a)), not at a ladder of its own as RopeSpec.axial defines",
    "Llama4VisionRotaryEmbedding": "complex freqs_ci over the one patch grid its config fixes (image_size / "
    "patch_size), with the class token at angle 0; its forward takes hidden states, no positions",
}


def refusal_of(cls) -> str | None:
    """Why no RopeSpec describes the tower rotary ``cls`` (None when one may)."""
    return _REFUSED.get(cls.__name__)


def adapter_of(cls) -> ImageRotary | None:
    """The probe adapter of an image rotary class (None for a token RoPE).  Besides the four named
    above: a tower's rotary (``...VisionRotaryEmbedding``; the text mRoPE modules recompose their
    tables too, so the name decides) that takes ``(x, position_ids)`` and recomposes per axis."""
    import inspect

    if cls.__name__ in _ADAPTERS:
        return _ADAPTERS[cls.__name__]
    tower = any(word in cls.__name__ for word in ("Vision", "Video"))
    takes = list(inspect.signature(cls.forward).parameters)
    if tower and hasattr(cls, "recomposition_frequencies") and takes == ["self", "x", "position_ids"]:
        return _VISION_TOWER
    return None


def call_on_grid(adapter: ImageRotary, modeling, module, rows: int = GRID[0], cols: int = GRID[1]):
    """(positions [2, N], cos [N, width], sin [N, width]) of the module on a rows x cols grid of patches."""
    import torch

    module.eval()  # DINOv3 jitters and rescales its coordinates in training mode
    with torch.no_grad():
        pos, cos, sin = adapter.call(modeling, module, rows, cols)
    n = rows * cols
    return pos, cos.float().reshape(n, -1), sin.float().reshape(n, -1)


def _follows(column, key) -> bool:
    """Whether ``column`` [N] is the same wherever the axis positions ``key`` [N] are."""
    import torch

    _, group = torch.unique(key, return_inverse=True)
    n = int(group.max()) + 1
    lo = torch.full((n,), math.inf).scatter_reduce(0, group, column, "amin")
    hi = torch.full((n,), -math.inf).scatter_reduce(0, group, column, "amax")
    return bool(torch.equal(lo, hi))


def axes_on_grid(pos, cos, sin) -> tuple[int, ...] | None:
    """The axis each pair (column of ``cos`` and ``sin`` [N, pairs]) follows on the grid ``pos``
    [axes, N]: the one axis whose equal positions give equal (cos, sin) (exactly: the module computes
    each entry from that position alone; cos and sin together, as a small angle can leave cos at 1.0
    everywhere).  None when a pair follows no axis or several."""
    axes = []
    for j in range(cos.shape[-1]):
        found = [a for a in range(pos.shape[0]) if _follows(cos[:, j], pos[a]) and _follows(sin[:, j], pos[a])]
        if len(found) != 1:
            return None
        axes.append(found[0])
    return tuple(axes)


def image_spec(probe, layout: str):
    """The axial spec of an image rotary: the axis of each pair read from its grid, its base from the
    config, every axis with a ladder of its own (``RopeSpec.axial``); the tables then judge it."""
    family, name = probe.family, probe.rotary_class.__name__
    axes = axes_on_grid(probe.positions, probe.cos, probe.sin)
    if axes is None:
        raise RopeConfigError(
            f"model_type={family!r}: on a grid of patches some column of {name}'s tables follows no single axis "
            f"(or several); refusing rather than guessing"
        )
    params = getattr(probe.config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind not in ("default", "axial"):
        raise RopeConfigError(f"model_type={family!r}: rope_type={kind!r} on an image rotary is not one ropekit reads")
    try:
        return RopeSpec(
            head_dim=2 * probe.n_pairs, base=params.get("rope_theta"), layout=layout, mrope_axes=axes, axial=True
        )
    except RopeError as exc:
        raise RopeConfigError(f"model_type={family!r}: {exc}") from None
