"""Measure which position axis drives each rotary pair of a family's mRoPE module.

A module with mRoPE sections (``module.mrope_section``) is called at positions that differ
between its axes (``axis_positions``).  The spec ``measured`` read at text positions, where every
axis is equal, then gets its axis arrangement:

1. one of the named kinds, contiguous (Qwen2-VL) or interleaved (Qwen3-VL) sections, with the
   module's own sections, when its tables reproduce the module's (``TABLE_TOL``);
2. otherwise each pair on its own: for every pair, which single axis's positions reproduce the
   module's column of that pair (both members of the pair, where the module duplicates it), which
   gives ``mrope_axes`` (ERNIE-4.5-VL: height and width alternate, then time);
3. otherwise a refusal with the reason: a column no single axis reproduces, or the two members of
   a pair following different axes (HunyuanOCR: not a rotation, which no RopeSpec describes).

>>> axis_positions(3)[:, :3].tolist()
[[0, 1, 2], [29, 30, 31], [22, 23, 24]]
"""

from __future__ import annotations

from ..errors import RopeConfigError
from .rotary_modules import SAMPLE_POSITIONS, call_rotary, module_failed, one_thread

__all__ = ["axis_positions", "measure_axes", "pair_axes"]


def axis_positions(n_axes: int):
    """[n_axes, n] positions that differ between axes at almost every token: axis a is the sample
    positions rolled by 7a (an mRoPE column driven by the wrong axis shows at once)."""
    import torch

    base = torch.tensor(SAMPLE_POSITIONS, dtype=torch.int64)
    return torch.stack([base.roll(7 * a) for a in range(n_axes)])


def measure_axes(probe, spec, tol: float):
    """The spec with the module's mRoPE arrangement: a named kind with the module's own sections,
    else the axis of each pair measured; refused when neither reproduces the module."""
    section, family = probe.mrope_section, probe.family
    # interleaved sections (Qwen3-VL) give columns to the height/width axes by section[1:] and every
    # other column to the temporal axis, so section[0] only has to make the sum (a module may leave
    # it short: Qwen4-Exp's [11, 11, 10] over 128 pairs is (107, 11, 10))
    candidates = {"interleaved": (spec.n_pairs - sum(section[1:]), *section[1:])}
    if sum(section) == spec.n_pairs:
        candidates = {"contiguous": section, **candidates}
    elif candidates["interleaved"][0] < 0:
        raise RopeConfigError(
            f"model_type={family!r}: {probe.rotary_class.__name__}'s mrope_section {list(section)} sums to "
            f"{sum(section)}, but it rotates {spec.n_pairs} pairs"
        )
    errs = {}
    for kind, sections in candidates.items():
        candidate = spec.without_mrope().replace(mrope_section=sections, mrope_interleaved=kind == "interleaved")
        errs[kind] = err = probe.axes_err(candidate)
        if err <= tol:
            return candidate
    axes = pair_axes(probe, spec, tol)
    counts = tuple(axes.count(a) for a in range(len(section)))
    candidate = spec.without_mrope().replace(mrope_section=counts, mrope_axes=axes)
    err = probe.axes_err(candidate)
    if err <= tol:
        return candidate
    shown = ", ".join(f"{kind}: {e:.3g}" for kind, e in errs.items())
    raise RopeConfigError(
        f"model_type={family!r}: at distinct per-axis positions {probe.rotary_class.__name__}'s tables match "
        f"neither mRoPE sections {list(section)} (table error {shown}) nor the measured axis of each pair "
        f"({err:.3g}); refusing rather than guessing"
    )


def _members(form: str, n_pairs: int, width: int) -> list[tuple[int, ...]]:
    """The columns of the module's raw table that hold each pair (its table form at text positions)."""
    if form.endswith("duplicated by cat") and width == 2 * n_pairs:
        return [(j, j + n_pairs) for j in range(n_pairs)]
    if form.endswith("repeated per column") and width == 2 * n_pairs:
        return [(2 * j, 2 * j + 1) for j in range(n_pairs)]
    return [(j,) for j in range(n_pairs)]


def _module_tables(probe, pos):
    """The module's raw (cos, sin) at per-axis positions ``pos`` [axes, n], one row per token."""
    try:
        with one_thread():
            a, b = call_rotary(probe.module, probe.layer_type, pos[:, None, :])
    except Exception as exc:
        raise module_failed(probe.family, probe.rotary_class, probe.config, exc, "per-axis positions") from None
    if b is None:  # complex freqs_cis
        return a.real.float(), a.imag.float()
    return (b, a) if probe.form.startswith("(sin, cos)") else (a, b)


def _column_err(c, s, cos, sin, columns):
    """Max |cos/sin| difference per pair between ropekit's compact tables and the given module columns."""
    return ((c - cos[:, columns]).abs().amax(0)).maximum((s - sin[:, columns]).abs().amax(0))


def pair_axes(probe, spec, tol: float) -> tuple[int, ...]:
    """For every pair, the one axis whose positions reproduce the module's columns of that pair
    (``tol``: max |cos/sin| difference); refused when a column has no such axis or several, or
    when the two members of a pair follow different axes."""
    import torch

    from ..tables import cos_sin

    n_axes, family, name = len(probe.mrope_section), probe.family, probe.rotary_class.__name__
    pos = axis_positions(n_axes)
    cos, sin = _module_tables(probe, pos)
    members = _members(probe.form, spec.n_pairs, cos.shape[-1])
    plain = spec.without_mrope().turning_forward()  # modules hand over +angle tables (see Probe.table_err)
    with one_thread():
        ours = [cos_sin(plain, pos[a], precision="hf", seq_len=len(SAMPLE_POSITIONS)) for a in range(n_axes)]
    # err[a, m, j]: member m of pair j in the module's table against ropekit's column j at axis a's positions
    err = torch.stack(
        [
            torch.stack([_column_err(c, s, cos, sin, [col[m] for col in members]) for m in range(len(members[0]))])
            for c, s in ours
        ]
    )
    axes = []
    for j, cols in enumerate(members):
        drivers = [[a for a in range(n_axes) if err[a, m, j] <= tol] for m in range(len(cols))]
        if any(len(d) != 1 for d in drivers):
            bad = next(m for m, d in enumerate(drivers) if len(d) != 1)
            what = "no single axis" if not drivers[bad] else f"axes {drivers[bad]} alike"
            raise RopeConfigError(
                f"model_type={family!r}: at distinct per-axis positions column {cols[bad]} of {name}'s tables "
                f"(pair {j}) is reproduced by {what} of its mrope_section {list(probe.mrope_section)} (smallest "
                f"error {err[:, bad, j].min().item():.3g}): neither section kind nor one axis per pair; refusing "
                f"rather than guessing"
            )
        if len({d[0] for d in drivers}) > 1:
            section = list(probe.mrope_section)
            per_pair = (
                f"; runtimes that split the compact table (one column per pair) by these sections rotate "
                f"contiguous mrope_section={section} instead, a rotation: RopeSpec(..., mrope_section={section}) "
                f"describes that reading, which differs from {name} at image positions"
                if sum(section) == spec.n_pairs
                else ""
            )
            raise RopeConfigError(
                f"model_type={family!r}: {name} splits its duplicated table by mrope_section "
                f"{section}, so at distinct per-axis positions the two members of a pair follow "
                f"different axes (pair {j}: columns {cols} follow axes {[d[0] for d in drivers]}) and turn by "
                f"different angles: not a rotation, which no RopeSpec describes (exact for text positions only, "
                f"where every axis is equal); refusing rather than guessing{per_pair}"
            )
        axes.append(drivers[0][0])
    return tuple(axes)
