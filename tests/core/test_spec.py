"""RopeSpec: every validation error names its field and value; lossless dict/JSON round trip;
transformations return new specs and are idempotent."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ropekit as rk
from ropekit.spec import Dynamic, Linear, Llama3, LongRope, Proportional, RopeSpec, Yarn, scaling_from_dict


def _raises(fn, *fragments):
    with pytest.raises(rk.RopeSpecError) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# (id, constructor, fragments the message must contain: the field and the offending value)
INVALID = [
    ("head_dim-zero", lambda: RopeSpec(head_dim=0), ["head_dim=0"]),
    ("head_dim-str", lambda: RopeSpec(head_dim="64"), ["head_dim='64'"]),
    ("rotary_dim-odd", lambda: RopeSpec(head_dim=64, rotary_dim=33), ["rotary_dim=33", "even"]),
    ("rotary_dim-too-large", lambda: RopeSpec(head_dim=128, rotary_dim=130), ["rotary_dim=130", "head_dim=128"]),
    ("rotary_dim-zero", lambda: RopeSpec(head_dim=64, rotary_dim=0), ["rotary_dim=0"]),
    ("base-zero", lambda: RopeSpec(head_dim=64, base=0.0), ["base=0.0"]),
    ("base-negative", lambda: RopeSpec(head_dim=64, base=-10000.0), ["base=-10000.0"]),
    ("base-nan", lambda: RopeSpec(head_dim=64, base=float("nan")), ["base=nan"]),
    ("base-inf", lambda: RopeSpec(head_dim=64, base=math.inf), ["base=inf"]),
    ("base-one", lambda: RopeSpec(head_dim=64, base=1.0), ["base=1.0"]),
    ("base-str", lambda: RopeSpec(head_dim=64, base="1e4"), ["base='1e4'"]),
    ("layout", lambda: RopeSpec(head_dim=64, layout="rotate"), ["layout='rotate'"]),
    ("scaling-type", lambda: RopeSpec(head_dim=64, scaling="yarn"), ["scaling='yarn'"]),
    ("linear-factor<1", lambda: Linear(factor=0.5), ["scaling.factor=0.5"]),
    ("dynamic-factor<1", lambda: Dynamic(factor=0.9, original_max_position_embeddings=4096), ["scaling.factor=0.9"]),
    (
        "dynamic-original",
        lambda: Dynamic(factor=2.0, original_max_position_embeddings=0),
        ["scaling.original_max_position_embeddings=0"],
    ),
    ("dynamic-r2", lambda: RopeSpec(head_dim=2, scaling=Dynamic(2.0, 4096)), ["rotary_dim=2", "dynamic"]),
    ("yarn-factor<1", lambda: Yarn(factor=0.25, original_max_position_embeddings=4096), ["scaling.factor=0.25"]),
    (
        "yarn-beta",
        lambda: Yarn(factor=4.0, original_max_position_embeddings=4096, beta_fast=1.0, beta_slow=32.0),
        ["scaling.beta_fast=1.0", "scaling.beta_slow=32.0"],
    ),
    ("yarn-beta-zero", lambda: Yarn(4.0, 4096, beta_fast=0.0), ["scaling.beta_fast=0.0"]),
    ("yarn-mscale", lambda: Yarn(4.0, 4096, mscale=-1.0), ["scaling.mscale=-1.0"]),
    ("yarn-truncate", lambda: Yarn(4.0, 4096, truncate="yes"), ["scaling.truncate='yes'"]),
    ("llama3-factor<1", lambda: Llama3(0.5, 1.0, 4.0, 8192), ["scaling.factor=0.5"]),
    ("llama3-high<=low", lambda: Llama3(8.0, 4.0, 4.0, 8192), ["scaling.high_freq_factor=4.0", "low_freq_factor=4.0"]),
    (
        "longrope-len-vs-rotary",
        lambda: RopeSpec(head_dim=8, scaling=LongRope((1.0,) * 3, (1.0,) * 3, 4096)),
        ["short_factor has 3 entries", "rotary_dim=8", "needs 4"],
    ),
    (
        "longrope-short-vs-long",
        lambda: LongRope((1.0,) * 4, (1.0,) * 5, 4096),
        ["short_factor has 4", "long_factor has 5"],
    ),
    ("longrope-entry", lambda: LongRope((1.0, -2.0), (1.0, 1.0), 4096), ["scaling.short_factor[1]=-2.0"]),
    ("longrope-not-list", lambda: LongRope(1.0, (1.0,), 4096), ["scaling.short_factor=1.0"]),
    ("proportional-partial", lambda: Proportional(partial_rotary_factor=1.5), ["scaling.partial_rotary_factor=1.5"]),
    (
        "proportional-rotary",
        lambda: RopeSpec(head_dim=64, rotary_dim=32, scaling=Proportional(0.5)),
        ["rotary_dim=32", "head_dim=64"],
    ),
    ("attention_factor", lambda: RopeSpec(head_dim=64, attention_factor=0.0), ["attention_factor=0.0"]),
    (
        "max_position_embeddings",
        lambda: RopeSpec(head_dim=64, max_position_embeddings=-1),
        ["max_position_embeddings=-1"],
    ),
    ("mrope-sum", lambda: RopeSpec(head_dim=16, mrope_section=(2, 2, 2)), ["mrope_section=[2, 2, 2]", "8"]),
    ("mrope-entry", lambda: RopeSpec(head_dim=16, mrope_section=(2, "x", 6)), ["mrope_section[1]='x'"]),
    ("mrope-interleaved-alone", lambda: RopeSpec(head_dim=16, mrope_interleaved=True), ["mrope_interleaved=True"]),
    ("unknown-kind", lambda: scaling_from_dict({"kind": "ntk", "factor": 2.0}), ["scaling.kind='ntk'"]),
    ("unknown-scaling-field", lambda: scaling_from_dict({"kind": "linear", "factor": 2.0, "alpha": 1}), ["alpha"]),
    (
        "missing-scaling-field",
        lambda: scaling_from_dict({"kind": "yarn", "factor": 2.0}),
        ["yarn", "original_max_position_embeddings"],
    ),
    ("from_dict-unknown", lambda: RopeSpec.from_dict({"head_dim": 64, "theta": 1.0}), ["theta"]),
    ("from_dict-no-head_dim", lambda: RopeSpec.from_dict({"base": 1e4}), ["head_dim"]),
    ("from_json-malformed", lambda: RopeSpec.from_json("{head_dim: 64"), ["JSON"]),
    ("fraction", lambda: RopeSpec(head_dim=64).with_rotary_fraction(1.5), ["fraction=1.5"]),
    ("precision", lambda: rk.inv_freq(RopeSpec(head_dim=64), precision="fp16"), ["precision='fp16'"]),
]


@pytest.mark.parametrize("make, fragments", [(m, f) for _, m, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_values_raise_naming_field_and_value(make, fragments):
    _raises(make, *fragments)


def test_errors_are_value_errors_and_one_family():
    with pytest.raises(ValueError):
        RopeSpec(head_dim=64, base=-1.0)
    assert issubclass(rk.RopeConfigError, rk.RopeSpecError) and issubclass(rk.RopeSpecError, rk.RopeError)


def test_layout_aliases_normalize():
    assert RopeSpec(head_dim=8, layout="neox").layout == "half"
    assert RopeSpec(head_dim=8, layout="GPTJ").layout == "interleaved"


def test_scaling_given_as_dict_is_validated():
    spec = RopeSpec(head_dim=8, scaling={"kind": "linear", "factor": 2.0})
    assert spec.scaling == Linear(2.0)


# ---------------------------------------------------------------------------------------------
# round trip (hypothesis over random valid specs)
# ---------------------------------------------------------------------------------------------

finite = dict(allow_nan=False, allow_infinity=False)
factors = st.floats(min_value=1.0, max_value=1e3, **finite)
positive = st.floats(min_value=1e-3, max_value=1e3, **finite)
originals = st.integers(min_value=1, max_value=2**20)


@st.composite
def specs(draw):
    n_pairs = draw(st.integers(min_value=2, max_value=64))
    rotary_dim = 2 * n_pairs
    head_dim = rotary_dim + 2 * draw(st.integers(min_value=0, max_value=32))
    kind = draw(st.sampled_from(["none", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional"]))
    if kind == "linear":
        scaling = Linear(draw(factors))
    elif kind == "dynamic":
        scaling = Dynamic(draw(factors), draw(originals))
    elif kind == "yarn":
        slow = draw(positive)
        scaling = Yarn(
            draw(factors),
            draw(originals),
            beta_fast=slow + draw(positive),
            beta_slow=slow,
            mscale=draw(st.none() | positive),
            mscale_all_dim=draw(st.none() | positive),
            truncate=draw(st.booleans()),
        )
    elif kind == "longrope":
        lists = st.lists(positive, min_size=n_pairs, max_size=n_pairs)
        scaling = LongRope(tuple(draw(lists)), tuple(draw(lists)), draw(originals), factor=draw(positive))
    elif kind == "llama3":
        low = draw(positive)
        scaling = Llama3(draw(factors), low, low + draw(positive), draw(originals))
    elif kind == "proportional":
        scaling = Proportional(draw(st.floats(min_value=0.0, max_value=1.0, **finite)), draw(positive))
        head_dim = rotary_dim
    else:
        scaling = None
    mrope = None
    if draw(st.booleans()):
        a = draw(st.integers(min_value=0, max_value=n_pairs))
        b = draw(st.integers(min_value=0, max_value=n_pairs - a))
        mrope = (a, b, n_pairs - a - b)
    return RopeSpec(
        head_dim=head_dim,
        rotary_dim=rotary_dim,
        base=draw(st.floats(min_value=1.0001, max_value=1e9, **finite)),
        layout=draw(st.sampled_from(["half", "interleaved", "neox", "gptj"])),
        scaling=scaling,
        max_position_embeddings=draw(st.none() | originals),
        attention_factor=draw(st.none() | positive),
        mrope_section=mrope,
        mrope_interleaved=mrope is not None and draw(st.booleans()),
    )


@given(specs())
def test_dict_and_json_round_trip_is_lossless(spec):
    data = spec.to_dict()
    text = json.dumps(data, allow_nan=False)  # strictly JSON-safe
    assert RopeSpec.from_dict(json.loads(text)) == spec
    assert RopeSpec.from_json(spec.to_json()) == spec
    assert RopeSpec.from_dict(data).to_dict() == data


@given(specs(), st.sampled_from([0.25, 0.5, 0.75, 1.0]), st.sampled_from(["half", "interleaved"]))
def test_transformations_are_idempotent(spec, fraction, layout):
    if spec.scaling is None or spec.scaling.kind not in ("longrope", "proportional", "dynamic"):
        if int(spec.head_dim * fraction) % 2 == 0 and spec.mrope_section is None:
            once = spec.with_rotary_fraction(fraction)
            assert once.with_rotary_fraction(fraction) == once  # never "halved twice"
            assert once.rotary_dim == int(spec.head_dim * fraction)
    once = spec.with_layout(layout)
    assert once.with_layout(layout) == once and once.layout == layout
    assert spec.with_scaling(spec.scaling) == spec
    assert spec.replace() == spec
