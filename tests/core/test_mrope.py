"""mRoPE axis maps (``RopeSpec.mrope_axes``, ``ropekit.mrope``): hostile values refused with the field
named, one stored form per rotation, JSON of the section kinds unchanged, and ``cos_sin`` equal to an
fp64 oracle that builds every pair from its own axis' positions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ropekit as rk
from ropekit.spec import RopeSpec
from ropekit.tables import mrope_axis_of_columns

MROPE_FIELDS = ("mrope_axes", "mrope_section", "mrope_interleaved")

# (id, constructor, fragments the message must contain: the field and the offending value)
INVALID = [
    ("short", lambda: RopeSpec(head_dim=8, mrope_axes=[0, 1, 2]), ["mrope_axes=[0, 1, 2] has 3 entries", "4 pairs"]),
    ("long", lambda: RopeSpec(head_dim=8, mrope_axes=[0] * 5), ["mrope_axes=[0, 0, 0, 0, 0] has 5 entries"]),
    ("negative", lambda: RopeSpec(head_dim=8, mrope_axes=[0, -1, 1, 2]), ["mrope_axes[1]=-1", ">= 0"]),
    ("float", lambda: RopeSpec(head_dim=8, mrope_axes=[0, 1.5, 1, 2]), ["mrope_axes[1]=1.5"]),
    ("str-entry", lambda: RopeSpec(head_dim=8, mrope_axes=[0, "1", 1, 2]), ["mrope_axes[1]='1'"]),
    ("bool-entry", lambda: RopeSpec(head_dim=8, mrope_axes=[0, True, 1, 2]), ["mrope_axes[1]=True"]),
    ("none-entry", lambda: RopeSpec(head_dim=8, mrope_axes=[0, None, 1, 2]), ["mrope_axes[1]=None"]),
    ("str", lambda: RopeSpec(head_dim=8, mrope_axes="0120"), ["mrope_axes='0120'", "list of integers"]),
    ("set", lambda: RopeSpec(head_dim=8, mrope_axes={0, 1, 2}), ["mrope_axes={0, 1, 2}", "list"]),
    ("int", lambda: RopeSpec(head_dim=8, mrope_axes=3), ["mrope_axes=3"]),
    ("huge-axis", lambda: RopeSpec(head_dim=8, mrope_axes=[0, 1, 2, 10**30]), ["mrope_axes[3]=", "<= 3"]),
    ("gap", lambda: RopeSpec(head_dim=8, mrope_axes=[0, 0, 2, 2]), ["uses axis 2", "axis 1", "mrope_section"]),
    (
        "section-counts",
        lambda: RopeSpec(head_dim=8, mrope_section=(2, 1, 1), mrope_axes=[1, 2, 0, 1]),
        ["mrope_section=[2, 1, 1]", "[1, 2, 1]"],
    ),
    (
        "beyond-section",
        lambda: RopeSpec(head_dim=8, mrope_section=(2, 2), mrope_axes=[0, 1, 2, 0]),
        ["mrope_axes[2]=2", "<= 1"],
    ),
    (
        "interleaved-other-map",
        lambda: RopeSpec(head_dim=12, mrope_interleaved=True, mrope_axes=[1, 2, 1, 2, 0, 0]),
        ["mrope_interleaved=True", "(1 2)x2 0x2"],
    ),
    ("interleaved-bad-type", lambda: RopeSpec(head_dim=8, mrope_interleaved=1, mrope_axes=[0] * 4), ["=1"]),
    (
        "from_dict",
        lambda: RopeSpec.from_dict({"head_dim": 8, "mrope_axes": [0, 1, 2]}),
        ["mrope_axes=[0, 1, 2] has 3 entries"],
    ),
]


@pytest.mark.parametrize("make, fragments", [(m, f) for _, m, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_axis_maps_raise_naming_field_and_value(make, fragments):
    with pytest.raises(rk.RopeSpecError) as info:
        make()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


hostile = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=4)
    | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=10) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(hostile, st.sampled_from([None, (2, 1, 1), (4,), (1, 1, 1, 1)]), st.booleans())
def test_hostile_axis_maps_are_refused_cleanly_or_mean_what_they_say(axes, section, interleaved):
    """Any value: a RopeSpecError naming an mRoPE field, or a spec whose columns follow exactly ``axes``."""
    try:
        spec = RopeSpec(head_dim=8, mrope_section=section, mrope_interleaved=interleaved, mrope_axes=axes)
    except rk.RopeSpecError as exc:
        assert any(field in str(exc) for field in MROPE_FIELDS), str(exc)
        return
    if axes is None:
        return
    assert mrope_axis_of_columns(spec).tolist() == list(axes)
    assert sum(spec.mrope_section) == spec.n_pairs
    assert RopeSpec.from_json(spec.to_json()) == spec


def test_a_map_that_is_a_section_kind_is_stored_as_that_kind():
    contiguous = RopeSpec(head_dim=16, mrope_section=(2, 3, 3))
    assert RopeSpec(head_dim=16, mrope_axes=[0, 0, 1, 1, 1, 2, 2, 2]) == contiguous
    interleaved = RopeSpec(head_dim=16, mrope_section=(4, 2, 2), mrope_interleaved=True)
    assert mrope_axis_of_columns(interleaved).tolist() == [0, 1, 2, 0, 1, 2, 0, 0]
    same = RopeSpec(head_dim=16, mrope_axes=(0, 1, 2, 0, 1, 2, 0, 0))
    assert same == interleaved and same.mrope_axes is None and same.mrope_interleaved
    other = RopeSpec(head_dim=16, mrope_axes=(1, 2, 1, 2, 1, 2, 0, 0))
    assert other != contiguous and other.mrope_section == (2, 3, 3) and other.mrope_axes is not None
    # an axis that drives no pair needs the section to say the positions have it
    spare = RopeSpec(head_dim=8, mrope_section=(2, 0, 2), mrope_axes=(0, 2, 0, 2))
    assert spare.mrope_section == (2, 0, 2) and spare.mrope_axes == (0, 2, 0, 2)


def test_the_section_kinds_json_is_unchanged_and_old_json_reads_as_before():
    # the dict format of the section kinds before mrope_axes existed, written out by hand
    old = {
        "head_dim": 16,
        "rotary_dim": 16,
        "base": 10000.0,
        "layout": "half",
        "scaling": None,
        "max_position_embeddings": None,
        "attention_factor": None,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    spec = RopeSpec.from_json(json.dumps(old))
    assert spec.mrope_axes is None and spec.mrope_interleaved and spec.mrope_section == (2, 3, 3)
    assert spec.to_dict() == old
    axes = RopeSpec(head_dim=16, mrope_axes=(1, 2, 1, 2, 1, 2, 0, 0))
    assert axes.to_dict()["mrope_axes"] == [1, 2, 1, 2, 1, 2, 0, 0]
    assert RopeSpec.from_dict(json.loads(axes.to_json())) == axes
    assert axes.describe().endswith("mrope=[2, 3, 3] axes (1 2)x3 0x2")
    assert axes.without_mrope() == RopeSpec(head_dim=16)


def _oracle(spec: RopeSpec, axes: list[int], positions: torch.Tensor):
    """fp64 tables written from the definitions: pair j turns at base**(-2j/r) times the position of
    its own axis; nothing of ropekit's mRoPE code or frequencies is used."""
    r = spec.rotary_dim
    cos = torch.empty(positions.shape[1], r // 2, dtype=torch.float64)
    sin = torch.empty_like(cos)
    for j, axis in enumerate(axes):
        for t in range(positions.shape[1]):
            angle = float(positions[axis, t]) * spec.base ** (-2.0 * j / r)
            cos[t, j], sin[t, j] = math.cos(angle), math.sin(angle)
    return cos, sin


@st.composite
def axis_maps(draw):
    n_axes = draw(st.integers(min_value=1, max_value=4))
    n_pairs = draw(st.integers(min_value=n_axes, max_value=12))
    axes = list(range(n_axes)) + draw(
        st.lists(st.integers(0, n_axes - 1), min_size=n_pairs - n_axes, max_size=n_pairs - n_axes)
    )
    order = draw(st.permutations(range(n_pairs)))
    return n_axes, [axes[i] for i in order]


@settings(max_examples=60, deadline=None)
@given(axis_maps(), st.floats(min_value=2.0, max_value=1e6), st.integers(0, 2**31 - 1))
def test_cos_sin_follows_each_pairs_own_axis(drawn, base, seed):
    n_axes, axes = drawn
    spec = RopeSpec(head_dim=2 * len(axes), base=base, mrope_axes=axes)
    positions = torch.randint(0, 5000, (n_axes, 7), generator=torch.Generator().manual_seed(seed))
    assert mrope_axis_of_columns(spec).tolist() == axes and RopeSpec.from_json(spec.to_json()) == spec
    cos, sin = rk.cos_sin(spec, positions, dtype=torch.float64)
    want_cos, want_sin = _oracle(spec, axes, positions)
    # float64 angles up to 5000 rad: a few ulps of the angle (the frequency is computed another way)
    assert (cos - want_cos).abs().max() <= 1e-11 and (sin - want_sin).abs().max() <= 1e-11


def test_the_oracle_tolerance_catches_a_wrong_axis_map():
    """Swapping two axes (or reading the map as contiguous sections) fails the same tolerance."""
    axes = [1, 2, 1, 2, 0, 0]
    spec = RopeSpec(head_dim=12, base=500000.0, mrope_axes=axes)
    positions = torch.tensor([[0, 5, 9, 200], [3, 1, 40, 7], [8, 2, 6, 1000]])
    want_cos, _ = _oracle(spec, axes, positions)
    swapped = spec.replace(mrope_axes=[2, 1, 2, 1, 0, 0])
    sections = spec.replace(mrope_axes=None)  # the same counts as contiguous sections
    for wrong in (swapped, sections):
        cos, _ = rk.cos_sin(wrong, positions, dtype=torch.float64)
        assert (cos - want_cos).abs().max() > 1e-3, wrong.describe()


def test_text_positions_turn_every_axis_alike():
    spec = RopeSpec(head_dim=12, mrope_axes=[1, 2, 1, 2, 0, 0])
    plain = rk.cos_sin(spec.without_mrope(), torch.arange(9), dtype=torch.float64)
    text = rk.cos_sin(spec, torch.arange(9), dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(plain, text))
