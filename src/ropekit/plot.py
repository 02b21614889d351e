"""Pictures of RoPE specs: the numbers behind them, then the figures.

Two questions people ask when they choose or debug a scaling:

* *Which dimensions does a scaling stretch, and by how much?*  ``wavelengths(spec)`` gives the
  wavelength (tokens per full turn, ``2 pi / inv_freq``) of every rotating pair; plotted against
  the pair index on a log axis, linear/llama3/yarn/longrope show their characteristic shapes.
* *How wrong is a float32 table at long positions?*  ``table_error(spec, positions, precision)``
  is the max abs error of one float32 cos/sin row per position against a float64 table of the same
  spec (whose own error is ~1e-16 * angle, < 4e-9 at 2**24: far below what it measures).

The numbers are plain functions (tested); ``plot_wavelengths`` / ``plot_error`` draw them with
matplotlib (the ``plot`` extra) and write the image atomically.

>>> import ropekit as rk
>>> from ropekit.plot import wavelengths
>>> [round(w, 2) for w in wavelengths(rk.RopeSpec(head_dim=4, base=100.0)).tolist()]
[6.28, 62.83]
"""

from __future__ import annotations

import math
import os
import tempfile

import torch

from .errors import RopePositionError, RopeSpecError, require
from .frequencies import inv_freq
from .spec import RopeSpec
from .tables import as_positions, cos_sin

__all__ = ["wavelengths", "table_error", "log_positions", "plot_wavelengths", "plot_error"]


def wavelengths(spec: RopeSpec, seq_len: int | None = None) -> torch.Tensor:
    """Tokens per full turn of every rotating pair, float64 (``inf`` for a pair that never turns)."""
    inv, _ = inv_freq(spec, seq_len=seq_len)
    return (2 * math.pi) / inv


def log_positions(max_position: int, points: int = 64) -> torch.Tensor:
    """About ``points`` distinct integer positions from 1 to ``max_position``, evenly spaced in log."""
    if not isinstance(max_position, int) or isinstance(max_position, bool) or max_position < 1:
        raise RopePositionError(f"max_position={max_position!r} must be an int >= 1")
    if not isinstance(points, int) or points < 2:
        raise RopePositionError(f"points={points!r} must be an int >= 2")
    grid = torch.logspace(0, math.log10(max_position), points, dtype=torch.float64)
    return torch.unique(grid.round().to(torch.int64).clamp(1, max_position))


def table_error(spec: RopeSpec, positions, precision: str = "exact") -> torch.Tensor:
    """Max abs error of the float32 cos/sin row of each position vs a float64 table, float64 [n].

    >>> import ropekit as rk
    >>> from ropekit.plot import table_error
    >>> spec = rk.RopeSpec(head_dim=128, base=500000.0)
    >>> bool(table_error(spec, [2**20], precision="hf")[0] > 1e-3)   # float32 angles drift
    True
    >>> bool(table_error(spec, [2**20], precision="exact")[0] < 1e-7)  # one final rounding
    True
    """
    positions = as_positions(positions).reshape(-1)
    if positions.numel() == 0:
        raise RopePositionError("positions is empty; nothing to measure")
    # One seq_len for every table, so dynamic/longrope compare the same frequencies on both sides.
    seq_len = int(positions.max().item()) + 1
    cos64, sin64 = cos_sin(spec, positions, dtype=torch.float64, precision="exact", seq_len=seq_len)
    cos32, sin32 = cos_sin(spec, positions, dtype=torch.float32, precision=precision, seq_len=seq_len)
    err_cos = (cos32.double() - cos64).abs().amax(-1)
    err_sin = (sin32.double() - sin64).abs().amax(-1)
    return torch.maximum(err_cos, err_sin)


def _check_specs(specs: dict) -> dict[str, RopeSpec]:
    if not isinstance(specs, dict) or not specs:
        raise RopeSpecError("specs must be a non-empty dict {label: RopeSpec}")
    for label, spec in specs.items():
        if not isinstance(spec, RopeSpec):
            raise RopeSpecError(f"specs[{label!r}] must be a ropekit.RopeSpec, got {type(spec).__name__}")
    return specs


def _save_atomically(fig, path: str) -> str:
    """Write the figure next to ``path`` under a temporary name, then rename: never a half image."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output directory {directory!r} does not exist")
    suffix = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(prefix=".ropekit-plot-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _draw(path: str, draw, **axes) -> str:
    """Create a figure, let ``draw(ax)`` add the lines, label it with ``axes``, save atomically."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        draw(ax)
        ax.set(**axes)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        return _save_atomically(fig, path)
    finally:
        plt.close(fig)


def plot_wavelengths(specs: dict, path: str) -> str:
    """One line per spec: wavelength (log scale) against the rotating pair index; returns ``path``."""
    specs = _check_specs(specs)

    def draw(ax):
        for label, spec in specs.items():
            ax.plot(range(spec.rotary_dim // 2), wavelengths(spec).tolist(), label=label)
            if spec.scaling is not None and getattr(spec.scaling, "original_max_position_embeddings", None):
                # the trained context: scalings stretch the wavelengths that exceed it
                ax.axhline(spec.scaling.original_max_position_embeddings, ls=":", lw=0.8, color="grey")

    return _draw(
        path,
        draw,
        yscale="log",
        xlabel="rotating pair i",
        ylabel="wavelength (tokens per turn)",
        title="RoPE wavelength per pair",
    )


def plot_error(specs: dict, path: str, max_position: int = 2**24, points: int = 48) -> str:
    """Float32 table error vs position (log-log) for each spec, transformers' float32 arithmetic
    (``precision="hf"``) beside ropekit's ``precision="exact"``; returns ``path``."""
    specs = _check_specs(specs)
    positions = log_positions(max_position, points)

    def draw(ax):
        for label, spec in specs.items():
            for precision, style in (("hf", "-"), ("exact", "--")):
                err = table_error(spec, positions, precision).clamp_min(1e-12)  # log axis: no zeros
                ax.plot(positions.tolist(), err.tolist(), style, label=f"{label} ({precision})")

    return _draw(
        path,
        draw,
        xscale="log",
        yscale="log",
        xlabel="position",
        ylabel="max |error| of cos, sin (float32 table)",
        title="cos/sin table error vs a float64 table",
    )
