"""Multimodal RoPE (mRoPE): which position axis drives each rotary pair.

A multimodal model gives every token one position per axis (temporal, height, width, ...), and
each rotary pair takes its angle from one of them, at its own frequency ``inv_freq[j]``.  A
RopeSpec says which axis in one of three ways:

* contiguous sections (Qwen2-VL), ``mrope_section=(16, 24, 24)``: the first 16 pairs follow
  axis 0, the next 24 axis 1, the last 24 axis 2;
* interleaved sections (Qwen3-VL), ``mrope_interleaved=True``: pairs cycle T, H, W, T, H, W, ...
  while the height and width sections last, every other pair follows axis 0;
* an explicit map, ``mrope_axes``: the axis of every pair, for arrangements that are neither
  (ERNIE-4.5-VL: the first 44 pairs alternate height and width, the last 20 follow time).

This module is the one home of that arithmetic, torch-free: ``RopeSpec`` validates and
normalizes its three fields with ``normalize``, ``tables.mrope_axis_of_columns`` turns
``axis_map`` into an index tensor.  A map that is one of the named kinds is stored as that
kind, so two specs that rotate alike are equal, and their JSON is the named kind's.

>>> axis_map((1, 2, 1), interleaved=False, n_pairs=4)
(0, 1, 1, 2)
>>> axis_map((2, 1, 1), interleaved=True, n_pairs=4)
(0, 1, 2, 0)
>>> normalize(None, False, [1, 2, 1, 2, 0, 0], n_pairs=6)   # -> (mrope_section, mrope_interleaved, mrope_axes)
((2, 2, 2), False, (1, 2, 1, 2, 0, 0))
>>> normalize(None, False, [0, 1, 1, 2], n_pairs=4)          # the contiguous kind, stored as such
((1, 2, 1), False, None)
>>> describe_axes((1, 2, 1, 2, 0, 0))
'(1 2)x2 0x2'

Axial RoPE (image models, ``RopeSpec.axial``) uses the same maps, but every axis has a frequency
ladder of its own: pair ``j`` turns at the ``rank_in_axis(axes)[j]``-th frequency of its axis.

>>> rank_in_axis((0, 1, 0, 1, 1))
(0, 0, 1, 1, 2)
"""

from __future__ import annotations

from typing import Any

from .errors import RopeSpecError, RopeSpecTypeError, short_repr
from .scaling import check_int

__all__ = ["axis_map", "pairs_axes", "rank_in_axis", "normalize", "describe_axes"]


def axis_map(section: tuple[int, ...], interleaved: bool, n_pairs: int) -> tuple[int, ...]:
    """The axis of each of ``n_pairs`` pairs under the named kinds (contiguous or interleaved sections).

    Interleaved: pair ``j`` follows axis ``j % n_axes`` while ``j < n_axes * section[j % n_axes]``
    (for every axis but the first), else axis 0.
    """
    if not interleaved:
        return tuple(axis for axis, width in enumerate(section) for _ in range(width))
    n_axes = len(section)
    return tuple(j % n_axes if j % n_axes and j < n_axes * section[j % n_axes] else 0 for j in range(n_pairs))


def pairs_axes(section: tuple[int, ...], interleaved: bool, axes: tuple[int, ...] | None, n_pairs: int):
    """The axis of every pair of a spec's (normalized) mRoPE fields, whichever form they take."""
    return axes if axes is not None else axis_map(section, interleaved, n_pairs)


def rank_in_axis(axes: tuple[int, ...]) -> tuple[int, ...]:
    """For every pair, how many pairs before it follow the same axis: its index in that axis's ladder."""
    seen: dict[int, int] = {}
    ranks = []
    for a in axes:
        ranks.append(seen.get(a, 0))
        seen[a] = ranks[-1] + 1
    return tuple(ranks)


def _check_section(section: Any, n_pairs: int) -> tuple[int, ...]:
    if isinstance(section, (str, bytes)) or not hasattr(section, "__iter__"):
        raise RopeSpecTypeError(f"mrope_section={short_repr(section)} must be a list of integers")
    section = tuple(check_int(f"mrope_section[{i}]", s, low=0) for i, s in enumerate(section))
    if sum(section) != n_pairs:
        raise RopeSpecError(
            f"mrope_section={short_repr(list(section))} sums to {sum(section)}; it must sum to "
            f"rotary_dim / 2 = {n_pairs}"
        )
    return section


def _check_axes(axes: Any, n_pairs: int, n_axes: int | None) -> tuple[int, ...]:
    """The axis map as a tuple of ints, one per pair, each in ``0..n_axes-1`` (checked before
    anything is built from it: its length first, so a hostile value costs nothing)."""
    if not isinstance(axes, (list, tuple)):
        raise RopeSpecTypeError(f"mrope_axes={short_repr(axes)} must be a list of integers (the axis of each pair)")
    if len(axes) != n_pairs:
        raise RopeSpecError(
            f"mrope_axes={short_repr(axes)} has {len(axes)} entries; rotary_dim / 2 = {n_pairs} pairs, one axis each"
        )
    high = n_pairs - 1 if n_axes is None else n_axes - 1
    return tuple(check_int(f"mrope_axes[{j}]", a, low=0, high=max(high, 0)) for j, a in enumerate(axes))


def normalize(section: Any, interleaved: Any, axes: Any, n_pairs: int):
    """``(mrope_section, mrope_interleaved, mrope_axes)`` checked, in the one form a spec stores.

    * sections alone: a named kind (``mrope_axes`` stays None);
    * ``mrope_axes`` alone: the number of axes is ``max(axes) + 1``, each of them owns a pair, and
      ``mrope_section`` becomes how many pairs each axis owns;
    * both: ``mrope_section[a]`` must count the pairs of axis ``a`` (an axis may own none);
    * a map that one of the named kinds gives is stored as that kind (``mrope_axes`` None).
    """
    if not isinstance(interleaved, bool):
        raise RopeSpecTypeError(f"mrope_interleaved={short_repr(interleaved)} must be a bool")
    if section is not None:
        section = _check_section(section, n_pairs)
    if axes is None:
        if interleaved and section is None:
            raise RopeSpecError("mrope_interleaved=True needs mrope_section")
        return section, interleaved, None
    axes = _check_axes(axes, n_pairs, None if section is None else len(section))
    n_axes = len(section) if section is not None else max(axes, default=-1) + 1
    counts = tuple(axes.count(a) for a in range(n_axes))
    if section is None:
        unused = [a for a, c in enumerate(counts) if not c]
        if unused:
            raise RopeSpecError(
                f"mrope_axes uses axis {n_axes - 1} but no pair follows axis {unused[0]}; give mrope_section "
                f"(with 0 for an axis that drives no pair) to say how many axes the positions have"
            )
        section = counts
    elif counts != section:
        raise RopeSpecError(
            f"mrope_section={short_repr(list(section))} disagrees with mrope_axes, whose pairs per axis are "
            f"{list(counts)}; give one of them, or both consistent"
        )
    if axes == axis_map(section, False, n_pairs) and not interleaved:
        return section, False, None
    if axes == axis_map(section, True, n_pairs):
        return section, True, None
    if interleaved:
        raise RopeSpecError(
            f"mrope_interleaved=True disagrees with mrope_axes ({describe_axes(axes)}), which is not the "
            f"interleaved arrangement of mrope_section={list(section)}; drop mrope_interleaved"
        )
    return section, False, axes


def describe_axes(axes: tuple[int, ...]) -> str:
    """The axis map, run-length encoded by its shortest repeating groups: ``'(1 2)x22 0x20'``."""
    parts, j = [], 0
    while j < len(axes):
        best = (1, 1)  # (group length, repeats), most pairs covered, shortest group on ties
        for width in range(1, 5):
            group = axes[j : j + width]
            if len(group) < width:
                break
            reps = 1
            while axes[j + reps * width : j + (reps + 1) * width] == group:
                reps += 1
            if reps > 1 and width * reps > best[0] * best[1]:
                best = (width, reps)
        width, reps = best
        group = " ".join(map(str, axes[j : j + width]))
        parts.append((f"({group})" if width > 1 else group) + (f"x{reps}" if reps > 1 else ""))
        j += width * reps
    return " ".join(parts)
