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

``measured`` calls the module through ``call_on_grid`` and measures the spec from its tables; the
axis of each pair is read from the grid itself (``axes_on_grid``): a column that follows an axis is
the same for every patch with the same position on that axis.

>>> import torch
>>> axes_on_grid(torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]]), torch.tensor([[1., 5.], [1., 6.], [2., 5.], [2., 6.]]))
(0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ImageRotary", "adapter_of", "call_on_grid", "axes_on_grid", "GRID"]

#: rows x columns of the probe grid: different sizes, so that a swapped axis shows
GRID = (6, 11)


@dataclass(frozen=True)
class ImageRotary:
    """How to probe one family's image rotary module.

    positions: what ropekit's positions are for this family (for people: it goes into spec.source).
    call: ``(modeling module, rotary module, rows, cols) -> (positions [2, N], cos, sin)``.
    apply: the name of the family's q/k apply function.
    heads_last: the apply function takes q as ``[b, s, h, d]`` and cos/sin as ``[s, d]``.
    """

    positions: str
    call: Callable
    apply: str = "apply_rotary_pos_emb"
    heads_last: bool = False


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
    "MLCDRotaryEmbedding": ImageRotary(_POSITION_IDS, _by_position_ids, "apply_rotary_pos_emb_vision", True),
    "Sam3ViTRotaryEmbedding": ImageRotary(_POSITION_IDS, _by_position_ids, "apply_rotary_pos_emb_2d"),
    "EfficientLoFTRRotaryEmbedding": ImageRotary(
        "the (row, column) of its aggregated feature grid, counted from 1, as [2, N]", _efficientloftr
    ),
    "EomtDinov3RotaryEmbedding": ImageRotary(
        "2*pi times its patch-centre coordinates in [-1, 1] (get_patches_center_coordinates), as [2, N]", _dinov3
    ),
}


def adapter_of(cls) -> ImageRotary | None:
    """The probe adapter of an image rotary class (None for a token RoPE)."""
    return _ADAPTERS.get(cls.__name__)


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


def axes_on_grid(pos, table) -> tuple[int, ...] | None:
    """The axis each column of ``table`` [N, pairs] follows on the grid ``pos`` [axes, N]: the one
    axis whose equal positions give equal values (exactly: the module computes each entry from that
    position alone).  None when a column follows no axis or several."""
    axes = []
    for j in range(table.shape[-1]):
        found = [a for a in range(pos.shape[0]) if _follows(table[:, j], pos[a])]
        if len(found) != 1:
            return None
        axes.append(found[0])
    return tuple(axes)
