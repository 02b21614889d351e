"""RopeSpec.angle_sign: pairs turn by ``angle_sign * position * inv_freq[i]``.

The truth is ``oracle.rope_fp64(..., inverse=True)``: a float64 complex multiplication by
``exp(-i angle)``, with frequencies computed here from the base (not by ropekit).  Every backend
and both ways of giving the rotation (tables, ``spec=``) must match it; the +angle rotation must
not (the tolerance catches the wrong sign); hostile values of the field are refused.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ropekit as rk

from oracle import assert_close_to, max_abs, rope_fp64

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _inv_freq64(spec: rk.RopeSpec) -> torch.Tensor:
    return spec.base ** (-torch.arange(0, spec.rotary_dim, 2, dtype=torch.float64) / spec.rotary_dim)


@st.composite
def _cases(draw):
    head_dim = 2 * draw(st.integers(1, 12))
    rotary_dim = 2 * draw(st.integers(1, head_dim // 2))
    base = draw(st.sampled_from([100.0, 10000.0, 500000.0]))
    layout = draw(st.sampled_from(["half", "interleaved"]))
    spec = rk.RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, base=base, layout=layout, angle_sign=-1)
    seq = draw(st.integers(2, 9))
    start = draw(st.integers(0, 5000))
    seed = draw(st.integers(0, 2**16))
    return spec, torch.arange(start, start + seq), seed


@SETTINGS
@given(_cases(), st.sampled_from(["reference", "cpu", "triton"]))
def test_tables_and_apply_match_the_fp64_rotation_by_minus_angle(case, backend):
    spec, pos, seed = case
    x = torch.randn(2, len(pos), 3, spec.head_dim, generator=torch.Generator().manual_seed(seed))
    truth = rope_fp64(x, _inv_freq64(spec), pos, spec.layout, inverse=True)
    cos, sin = rk.cos_sin(spec, pos)
    y = rk.apply_rope(x, cos, sin, layout=spec.layout, backend=backend)
    assert_close_to(y, truth)
    # spec= (triton: in-kernel angles, through the kernel's inverse flag) is the same rotation
    assert_close_to(rk.apply_rope(x, spec=spec, positions=pos[None].expand(2, -1), backend=backend), truth)
    # the wrong sign fails the very same check wherever an angle is not tiny
    plus = rk.apply_rope(x, *rk.cos_sin(spec.turning_forward(), pos), layout=spec.layout, backend="reference")
    assert max_abs(plus, truth) > 1e-3
    with pytest.raises(AssertionError):
        assert_close_to(plus, truth)


@SETTINGS
@given(_cases(), st.sampled_from(["exact", "hf"]), st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
def test_sin_is_negated_exactly_in_every_precision(case, precision, dtype):
    """hf precision stays transformers' own float32 sin, negated: bit for bit, never recomputed."""
    spec, pos, _ = case
    c_minus, s_minus = rk.cos_sin(spec, pos, dtype=dtype, precision=precision)
    c_plus, s_plus = rk.cos_sin(spec.turning_forward(), pos, dtype=dtype, precision=precision)
    assert torch.equal(c_minus, c_plus) and torch.equal(s_minus, -s_plus)
    assert torch.equal(torch.signbit(s_minus[s_minus != 0]), ~torch.signbit(s_plus[s_plus != 0]))


def test_hf_tables_are_the_transformers_module_tables_negated():
    """The oracle of precision='hf': a transformers module (Llama's, which is +angle) on the same positions."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4)
    pos = torch.arange(0, 9000, 13)[None]
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1), pos)
    spec = rk.from_config(config).replace(angle_sign=-1)
    c, s = rk.cos_sin(spec, pos[0], precision="hf")
    assert torch.equal(c, cos[0, :, : spec.n_pairs]) and torch.equal(s, -sin[0, :, : spec.n_pairs])


def test_apply_rope_qkv_spec_turns_by_minus_angle():
    spec = rk.RopeSpec(head_dim=8, angle_sign=-1)
    qkv = torch.randn(1, 6, (2 + 2 * 1) * 8, generator=torch.Generator().manual_seed(3))
    out = rk.apply_rope_qkv(qkv, spec=spec, n_q_heads=2, n_kv_heads=1)
    heads = qkv.view(1, 6, 4, 8)
    truth = rope_fp64(heads[:, :, :3], _inv_freq64(spec), torch.arange(6), "half", inverse=True)
    assert_close_to(out.view(1, 6, 4, 8)[:, :, :3], truth)
    assert torch.equal(out.view(1, 6, 4, 8)[:, :, 3], heads[:, :, 3])


def test_inverse_of_a_minus_angle_rotation_is_the_plus_angle_one():
    spec = rk.RopeSpec(head_dim=16, layout="interleaved", angle_sign=-1)
    x = torch.randn(1, 5, 2, 16, generator=torch.Generator().manual_seed(4))
    back = rk.apply_rope(x, *rk.cos_sin(spec, 5), layout="interleaved", inverse=True)
    assert_close_to(back, rope_fp64(x, _inv_freq64(spec), torch.arange(5), "interleaved"))


def test_gradients_are_the_transposed_rotation():
    spec = rk.RopeSpec(head_dim=8, angle_sign=-1)
    x = torch.randn(1, 4, 2, 8, dtype=torch.float64, requires_grad=True)
    rk.apply_rope(x, *rk.cos_sin(spec, 4, dtype=torch.float64)).pow(2).sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-12)  # |R x|^2 = |x|^2
    assert torch.autograd.gradcheck(lambda t: rk.apply_rope(t, *rk.cos_sin(spec, 4, dtype=torch.float64)), (x,))


# -- the field itself ----------------------------------------------------------------------------


def test_serialization_carries_it_and_old_json_reads_plus_one():
    spec = rk.RopeSpec(head_dim=64, base=5e5, angle_sign=-1)
    assert spec.to_dict()["angle_sign"] == -1
    assert rk.RopeSpec.from_json(spec.to_json()) == spec and rk.RopeSpec.from_dict(spec.to_dict()) == spec
    assert spec != spec.turning_forward()  # the direction is part of the rotation
    assert "angle_sign" not in spec.turning_forward().to_dict()  # +1 specs serialize as before
    old = {"head_dim": 64, "rotary_dim": 64, "base": 500000.0, "layout": "half"}
    assert rk.RopeSpec.from_json(json.dumps(old)).angle_sign == 1
    assert "angle_sign=-1" in spec.describe() and "angle" not in spec.turning_forward().describe()


_HOSTILE = st.one_of(
    st.booleans(),
    st.integers().filter(lambda v: v not in (1, -1)),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.just(float("inf")),
    st.just(-1.0),
)


@SETTINGS
@given(_HOSTILE)
def test_hostile_values_are_refused_naming_the_field(value):
    for build in (
        lambda: rk.RopeSpec(head_dim=8, angle_sign=value),
        lambda: rk.RopeSpec(head_dim=8).replace(angle_sign=value),
        lambda: rk.RopeSpec.from_dict({"head_dim": 8, "angle_sign": value}),
    ):
        with pytest.raises(rk.RopeSpecError, match="angle_sign="):
            build()
    try:
        text = json.dumps({"head_dim": 8, "angle_sign": value}, allow_nan=True)
    except (TypeError, ValueError):
        return
    with pytest.raises(rk.RopeSpecError, match="angle_sign="):
        rk.RopeSpec.from_json(text)


def test_from_config_override_is_checked():
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}
    assert rk.from_config(config, angle_sign=-1).angle_sign == -1
    with pytest.raises(rk.RopeConfigError, match="angle_sign=0"):
        rk.from_config(config, angle_sign=0)


# -- checkpoints: -angle rows, pair members swapped, are +angle rows ------------------------------


@SETTINGS
@given(_cases(), st.sampled_from(["half", "interleaved"]))
def test_flipping_the_direction_of_q_k_rows_keeps_every_score(case, dst):
    """q.k of a projection rotated by -angle equals q.k of its rows with pair members swapped
    (``permute_qk(..., flip_direction=True)``, any target layout) rotated by +angle, in fp64."""
    spec, pos, seed = case
    gen = torch.Generator().manual_seed(seed)
    n_heads, hidden = 2, 6
    wq, wk = (torch.randn(n_heads * spec.head_dim, hidden, generator=gen, dtype=torch.float64) for _ in range(2))
    x = torch.randn(len(pos), hidden, generator=gen, dtype=torch.float64)

    def scores(wq, wk, layout, inverse):
        q, k = ((x @ w.T).view(1, len(pos), n_heads, spec.head_dim) for w in (wq, wk))
        q, k = (rope_fp64(t, _inv_freq64(spec), pos, layout, inverse=inverse) for t in (q, k))
        return torch.einsum("bshd,bthd->hst", q, k)

    theirs = scores(wq, wk, spec.layout, inverse=True)  # the -angle model
    flip = dict(n_heads=n_heads, head_dim=spec.head_dim, rotary_dim=spec.rotary_dim, src=spec.layout, dst=dst)
    fq, fk = rk.permute_qk(wq, **flip, flip_direction=True), rk.permute_qk(wk, **flip, flip_direction=True)
    assert max_abs(scores(fq, fk, dst, inverse=False), theirs) <= 1e-10 * theirs.abs().max().item()
    # the deliberately wrong variant: the layout changed but the members not swapped
    plain_q, plain_k = rk.permute_qk(wq, **flip), rk.permute_qk(wk, **flip)
    assert max_abs(scores(plain_q, plain_k, dst, inverse=False), theirs) > 1e-6
    back = dict(flip, src=dst, dst=spec.layout)
    assert torch.equal(rk.permute_qk(fq, **back, flip_direction=True), wq)  # an exact involution


def test_flip_direction_must_be_a_bool():
    with pytest.raises(rk.RopeError, match="flip_direction"):
        rk.permute_qk(torch.zeros(8, 2), 1, 8, flip_direction=1)


def test_the_catalog_reads_nanochat_by_minus_angle_from_the_family_table():
    from ropekit.dialects.catalog import catalog_config
    from ropekit.dialects.spec_table import spec_table

    spec = rk.from_config(catalog_config("nanochat-d32"))  # a plain dict: no transformers needed
    assert (spec.layout, spec.head_dim, spec.base, spec.angle_sign) == ("half", 128, 10000.0, -1)
    assert "half -angle" in spec_table([("nanochat-d32", None, spec)])
