"""Axial RoPE (``RopeSpec.axial``, the 2-D image rotaries): every axis turns its own pairs by a
frequency ladder of its own.  The tables against an fp64 oracle written from the definition (pair j
of axis a, the k-th of its n_a pairs, turns by ``p_a * base ** (-k / n_a)``), the decomposition into
one 1-D RoPE per axis (hypothesis), and hostile values refused with the field named."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ropekit as rk
from ropekit.errors import RopePositionError, RopeSpecError, RopeSpecTypeError
from ropekit.spec import RopeSpec
from ropekit.tables import mrope_axis_of_columns


def _oracle(axes, base, pos):
    """cos and sin from the definition, in Python floats: no ropekit code involved."""
    counts = {a: axes.count(a) for a in set(axes)}
    seen: dict[int, int] = {}
    cos, sin = [], []
    for token in range(len(pos[0])):
        row_c, row_s = [], []
        seen.clear()
        for a in axes:
            k = seen.get(a, 0)
            seen[a] = k + 1
            angle = pos[a][token] * base ** (-k / counts[a])
            row_c.append(math.cos(angle))
            row_s.append(math.sin(angle))
        cos.append(row_c)
        sin.append(row_s)
    return torch.tensor(cos, dtype=torch.float64), torch.tensor(sin, dtype=torch.float64)


MLCD_LIKE = RopeSpec(head_dim=16, mrope_section=(4, 4), axial=True)  # cat(height ladder, width ladder)
LOFTR_LIKE = RopeSpec(head_dim=16, mrope_axes=(0, 1) * 4, axial=True, layout="interleaved")  # alternating


@pytest.mark.parametrize("spec", [MLCD_LIKE, LOFTR_LIKE], ids=["contiguous", "alternating"])
def test_tables_equal_the_definition(spec):
    pos = torch.tensor([[0.0, 3.0, -2.5, 17.0, 1e4], [5.0, -0.75, 0.0, 33.0, 2047.0]], dtype=torch.float64)
    axes = mrope_axis_of_columns(spec).tolist()
    want_cos, want_sin = _oracle(axes, spec.base, pos.tolist())
    cos, sin = rk.cos_sin(spec, pos, dtype=torch.float64)
    assert (cos - want_cos).abs().max() < 1e-12 and (sin - want_sin).abs().max() < 1e-12
    # the deliberately wrong variant, one ladder over all pairs (mRoPE, not axial), fails the same check
    cos, sin = rk.cos_sin(spec.replace(axial=False), pos.abs(), dtype=torch.float64)
    want_cos, want_sin = _oracle(axes, spec.base, pos.abs().tolist())
    assert (sin - want_sin).abs().max() > 1e-3


@settings(max_examples=60, deadline=None)
@given(
    axes=st.lists(st.integers(0, 2), min_size=1, max_size=12).filter(lambda a: set(a) == set(range(max(a) + 1))),
    base=st.floats(2.0, 1e6),
    pos=st.lists(st.floats(0, 4096, allow_nan=False), min_size=3, max_size=3),
    precision=st.sampled_from(["exact", "hf"]),
)
def test_axial_is_one_rope_per_axis(axes, base, pos, precision):
    """The columns of axis a are the tables of a 1-D RoPE over that axis's pairs alone, at that axis's
    positions, bit for bit in both precisions (the same arithmetic, assembled differently)."""
    spec = RopeSpec(head_dim=2 * len(axes), base=base, mrope_axes=axes, axial=True)
    n_axes = max(axes) + 1
    positions = torch.tensor([[p + 0.5 * a for p in pos] for a in range(n_axes)], dtype=torch.float64)
    cos, sin = rk.cos_sin(spec, positions, dtype=torch.float64, precision=precision)
    columns = mrope_axis_of_columns(spec)
    for a in range(n_axes):
        one = RopeSpec(head_dim=2 * axes.count(a), base=base)
        c, s = rk.cos_sin(one, positions[a], dtype=torch.float64, precision=precision)
        assert torch.equal(cos[:, columns == a], c) and torch.equal(sin[:, columns == a], s)


def test_the_field_round_trips_and_reads():
    assert MLCD_LIKE.to_dict()["axial"] is True and "axial" not in RopeSpec(head_dim=16).to_dict()
    assert RopeSpec.from_json(LOFTR_LIKE.to_json()) == LOFTR_LIKE
    assert json.loads(LOFTR_LIKE.to_json())["mrope_interleaved"] is True  # alternating = interleaved kind
    assert "axial" in MLCD_LIKE.describe() and MLCD_LIKE != MLCD_LIKE.replace(axial=False)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: RopeSpec(head_dim=16, axial=True), RopeSpecError, "needs the position axes"),
        (lambda: RopeSpec(head_dim=16, mrope_section=(4, 4), axial=1), RopeSpecTypeError, "axial=1 must be a bool"),
        (lambda: RopeSpec(head_dim=16, mrope_section=(4, 4), axial="yes"), RopeSpecTypeError, "axial='yes'"),
        (
            lambda: RopeSpec(head_dim=16, mrope_section=(4, 4), axial=True, scaling=rk.Linear(factor=2.0)),
            RopeSpecError,
            "axial=True with scaling='linear'",
        ),
        (lambda: MLCD_LIKE.without_mrope(), RopeSpecError, "no one-axis form"),
    ],
)
def test_hostile_values_are_refused(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_negative_positions_only_for_axial():
    """Image coordinates centred on the image are negative on one side; token positions never are."""
    pos = torch.tensor([[-1.0, 0.5], [0.25, -0.5]])
    rk.cos_sin(MLCD_LIKE, pos)
    with pytest.raises(RopePositionError, match="must be >= 0"):
        rk.cos_sin(RopeSpec(head_dim=16, mrope_section=(4, 4)), pos)
    with pytest.raises(RopePositionError, match=r"contains -\d.*beyond 2\*\*53"):
        rk.cos_sin(MLCD_LIKE, torch.tensor([[-(2.0**60), 0.0], [0.0, 0.0]]))
