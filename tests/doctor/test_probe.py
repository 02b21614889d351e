"""fingerprint recovers the spec of every zoo convention and of random specs, in fp32 and bf16,
and says plainly when a function is not a RoPE.

Expected specs are written here by hand (from the conventions' documentation), not produced by the
code under test.  Random specs are implemented twice: with ropekit's tables + reference rotation,
and with the independent fp64 oracle (tests/oracle.py) from frequencies computed here."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ropekit as rk
from ropekit.doctor.probe import spec_rope_fn

from oracle import rope_fp64

L31 = rk.Llama3(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
ZOO_EXPECTED = {
    # name: (spec, offset)
    "hf_rotate_half": (rk.RopeSpec(head_dim=128, base=10000.0, layout="half"), 0),
    "meta_complex": (rk.RopeSpec(head_dim=128, base=10000.0, layout="interleaved"), 0),
    "gptj": (rk.RopeSpec(head_dim=256, rotary_dim=64, base=10000.0, layout="interleaved"), 0),
    "neox_partial": (rk.RopeSpec(head_dim=96, rotary_dim=24, base=10000.0, layout="half"), 0),
    "glm": (rk.RopeSpec(head_dim=128, rotary_dim=64, base=10000.0, layout="interleaved"), 0),
    "minimind_complex": (rk.RopeSpec(head_dim=64, base=1e4, layout="interleaved"), 0),
    "minimind_rotate_half": (rk.RopeSpec(head_dim=64, base=1e6, layout="half"), 0),
    "llama31_scaled": (rk.RopeSpec(head_dim=128, base=500000.0, layout="half", scaling=L31), 0),
    "halved_rotary_bug": (rk.RopeSpec(head_dim=128, rotary_dim=32, base=10000.0, layout="half"), 0),
    "offset_by_one": (rk.RopeSpec(head_dim=128, base=10000.0, layout="half"), 1),
    "bf16_inv_freq": (rk.RopeSpec(head_dim=128, base=10000.0, layout="half"), 0),
    "neox_bf16_inside": (rk.RopeSpec(head_dim=256, rotary_dim=64, base=10000.0, layout="half"), 0),
    "fp16_inside": (rk.RopeSpec(head_dim=128, base=10000.0, layout="half"), 0),
    "autocast_matmul": (rk.RopeSpec(head_dim=64, base=10000.0, layout="half"), 0),
}
#: the entries that compute in a narrower format than they return: (format, significand bits)
ZOO_INSIDE = {
    "neox_bf16_inside": (torch.bfloat16, 8),
    "fp16_inside": (torch.float16, 11),
    "autocast_matmul": (torch.bfloat16, 8),
}
#: the zoo computes float32 angles the way transformers does (bit-compatible with precision="hf"),
#: except the entry whose inv_freq was rounded to bfloat16
ZOO_PRECISION = {name: "hf" for name in ZOO_EXPECTED} | {"bf16_inv_freq": "inv_freq:bfloat16"}
#: rounded to 8 or 11 bits, float32 and float64 tables are indistinguishable: either is right
ZOO_PRECISION |= {name: ("exact", "hf") for name in ZOO_INSIDE}


def _in_dtype(fn, dtype):
    """The bf16/fp16 version of an implementation: float32 tables and math, result rounded to dtype
    (what a model in bf16 does)."""
    return lambda x, p: fn(x.float(), p).to(dtype)


def test_zoo_is_covered():
    assert set(ZOO_EXPECTED) == set(rk.zoo.ZOO)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(ZOO_EXPECTED))
def test_zoo_entry_exact_spec(name, dtype):
    entry = rk.zoo.ZOO[name]
    spec, offset = ZOO_EXPECTED[name]
    fn = entry.fn if dtype == torch.float32 else _in_dtype(entry.fn, dtype)
    fp = rk.fingerprint(fn, entry.head_dim, dtype=dtype)
    assert fp.spec == spec, fp.summary()
    assert fp.offset == offset and fp.direction == 1
    assert fp.precision in ZOO_PRECISION[name] if name in ZOO_INSIDE else fp.precision == ZOO_PRECISION[name]
    inside = ZOO_INSIDE.get(name, (dtype, None))[0]
    coarser = max(torch.finfo(dtype).eps, torch.finfo(inside).eps)
    assert fp.residual <= coarser
    if name in ZOO_INSIDE and torch.finfo(inside).eps > torch.finfo(dtype).eps:
        assert (fp.output_precision, fp.significand_bits) == (str(inside)[6:], ZOO_INSIDE[name][1])
        assert fp.rounded_inside and f"rounded to {str(inside)[6:]} inside" in fp.summary()
        assert "outputs rounded to" in fp.notes[0] and "interface" in fp.notes[0]
    else:
        assert not fp.rounded_inside and fp.output_precision == str(dtype)[6:]
    assert fp.inv_freq.dtype == torch.float64 and fp.inv_freq.numel() == spec.rotary_dim // 2


def _exponents(r):
    return torch.arange(0, r, 2, dtype=torch.float64) / r


def _from_math(head_dim, r, base, layout, factor, af, offset, dtype):
    """An fp64 rotation written from the formula (not ropekit's tables), rounded to dtype."""
    inv = base ** -_exponents(r) / factor

    def fn(x, positions):
        x64 = torch.zeros(x.shape[0], 1, head_dim, dtype=torch.float64)
        x64[:, 0] = x.double()
        y = rope_fp64(x64[..., :r], inv, positions.double() + offset, layout, attention_factor=af)
        return torch.cat((y[:, 0], x64[:, 0, r:]), dim=-1).to(dtype)

    return fn


def bases(dtype):
    """Bases as configs write them.  In float32 any integer is identifiable; bf16 rounds every probed
    value to 2**-8, which pins theta to ~1e-6 relative at position 2**20, so two bases closer than
    that (286725 vs 286726 with rotary_dim 4) explain a bf16 fn equally well: there the bases are
    drawn with 3 significant digits, as real ones have (10000, 500000, 1e6, 2.5e5 ...)."""
    if dtype == torch.float32:
        return st.integers(100, 10_000_000).map(float)
    return st.builds(lambda m, k: float(m * 10**k), st.integers(100, 999), st.integers(0, 4))


@st.composite
def random_specs(draw, dtype):
    head_dim = draw(st.sampled_from([16, 32, 64, 96, 128, 256]))
    rotary_dim = 2 * draw(st.integers(2, head_dim // 2))
    base = draw(bases(dtype))
    layout = draw(st.sampled_from(["half", "interleaved"]))
    kind = draw(st.sampled_from([None, "linear", "llama3", "yarn"]))
    factor = float(draw(st.sampled_from([2, 4, 8, 16, 2.5])))
    if kind == "linear":
        scaling = rk.Linear(factor=factor)
    elif kind == "llama3":
        scaling = rk.Llama3(
            factor=factor,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=draw(st.sampled_from([4096, 8192])),
        )
    elif kind == "yarn":
        scaling = rk.Yarn(factor=factor, original_max_position_embeddings=draw(st.sampled_from([4096, 32768])))
    else:
        scaling = None
    offset = draw(st.integers(-3, 5))
    return rk.RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, base=base, layout=layout, scaling=scaling), offset


def _check_recovered(fp, spec, offset, dtype):
    assert fp.spec is not None, fp.reason
    assert (fp.spec.layout, fp.spec.rotary_dim, fp.offset, fp.direction) == (spec.layout, spec.rotary_dim, offset, 1)
    # the frequencies (what the rotation is) always match to the probe's precision
    got, want = rk.inv_freq(fp.spec)[0], rk.inv_freq(spec)[0]
    angle_err = ((got - want).abs() * 2**20).max().item()
    assert angle_err <= (1e-5 if dtype == torch.float32 else 2e-2), (angle_err, fp.summary())
    assert rk.inv_freq(fp.spec)[1] == pytest.approx(rk.inv_freq(spec)[1], abs=2 * torch.finfo(dtype).eps)
    if spec.scaling is None or spec.scaling.kind == "linear":
        assert fp.spec == spec, fp.summary()
        return
    # llama3 / yarn: which family (and which base) is identifiable only when the frequencies show it:
    # a scaling that changes no frequency is a plain RoPE; a blend band of <= 2 pairs fits both
    # families' ramps; their free parameters (original context, ramp ends) only as ratios
    plain = rk.inv_freq(spec.replace(scaling=None))[0]
    ratio = want / plain
    f = spec.scaling.factor
    kept, band = (ratio == 1).sum().item(), ((ratio > 1 / f + 1e-6) & (ratio < 1 - 1e-6)).sum().item()
    if torch.equal(want, plain):
        assert fp.spec.scaling is None and fp.spec.base == spec.base
    elif band >= 3 and kept >= 2:
        assert fp.spec.scaling.kind == spec.scaling.kind, fp.summary()
        assert (fp.spec.scaling.factor, fp.spec.base) == (f, spec.base)


@settings(max_examples=30)
@given(st.data(), st.sampled_from([torch.float32, torch.bfloat16]), st.sampled_from(["exact", "hf"]))
def test_random_spec_recovered(data, dtype, precision):
    spec, offset = data.draw(random_specs(dtype))
    fn = spec_rope_fn(spec, offset=offset, precision=precision)
    fp = rk.fingerprint(fn, spec.head_dim, dtype=dtype)
    _check_recovered(fp, spec, offset, dtype)
    if dtype == torch.float32:
        assert fp.precision == precision


@settings(max_examples=15)
@given(
    st.data(),
    st.sampled_from([32, 64, 128]),
    st.integers(2, 16),
    st.sampled_from(["half", "interleaved"]),
    st.sampled_from([1.0, 4.0, 2.5]),
    st.sampled_from([1.0, 1.25]),
    st.integers(0, 4),
    st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_random_fp64_from_the_math(data, head_dim, half_r, layout, factor, af, offset, dtype):
    base = data.draw(bases(dtype))
    r = min(2 * half_r * (head_dim // 32), head_dim)
    fn = _from_math(head_dim, r, base, layout, factor, af, offset, dtype)
    fp = rk.fingerprint(fn, head_dim, dtype=dtype)
    scaling = rk.Linear(factor=factor) if factor != 1.0 else None
    want = rk.RopeSpec(
        head_dim=head_dim,
        rotary_dim=r,
        base=base,
        layout=layout,
        scaling=scaling,
        attention_factor=None if af == 1.0 else af,
    )
    _check_recovered(fp, want, offset, dtype)
    assert fp.attention_factor == pytest.approx(af, abs=torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("precision", ["exact", "hf"])
def test_yarn_exact_spec(dtype, precision):
    spec = rk.RopeSpec(head_dim=128, base=1e6, scaling=rk.Yarn(factor=4.0, original_max_position_embeddings=32768))
    fp = rk.fingerprint(spec_rope_fn(spec, offset=2, precision=precision), 128, dtype=dtype)
    assert (fp.spec, fp.offset) == (spec, 2), fp.summary()
    assert fp.attention_factor == pytest.approx(0.1 * math.log(4.0) + 1, abs=torch.finfo(dtype).eps)


def test_direction_and_offset_and_attention_factor():
    spec = rk.RopeSpec(head_dim=64, base=50000.0, layout="interleaved", attention_factor=1.125)
    fp = rk.fingerprint(spec_rope_fn(spec, offset=7, direction=-1), 64)
    assert (fp.spec, fp.offset, fp.direction) == (spec, 7, -1)
    assert "direction=-1" in fp.summary()


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda x, p: x * 2, "not passed through"),
        (lambda x, p: x.flip(-1), "not as a rotation"),
        (lambda x, p: torch.tanh(x), "not linear"),
        (lambda x, p: x + 0.0, "no dims rotate"),
        (
            lambda x, p: (
                x @ torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))[0].float()
            ),
            "several dims",
        ),
    ],
)
def test_non_rotations_say_so(fn, words):
    fp = rk.fingerprint(fn, 32)
    assert fp.spec is None
    assert words in fp.reason
    assert fp.summary().startswith("no RoPE explains fn")


def test_unusual_pairing_is_reported_not_forced():
    # dims rotate in pairs (0, 3), (1, 2): a rotation, but neither layout
    spec = rk.RopeSpec(head_dim=4)
    inner = spec_rope_fn(spec)
    perm = torch.tensor([0, 1, 3, 2])
    fp = rk.fingerprint(lambda x, p: inner(x[:, perm], p)[:, perm], 4)
    assert fp.spec is None and "neither the half nor the interleaved" in fp.reason
    assert sorted(fp.pairs) == [(0, 3), (1, 2)]


def test_fn_errors_are_named():
    def broken(x, p):
        raise IndexError("position out of range")

    with pytest.raises(rk.RopeError, match="IndexError: position out of range.*max_position"):
        rk.fingerprint(broken, 16)
    # an implementation with a cached table of 4096 positions is probed below it when told so
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=16), 4096)
    cached = lambda x, p: rk.apply_rope(x[None, :, None], cos[p], sin[p])[0, :, 0]  # noqa: E731
    with pytest.raises(rk.RopeError, match="up to 1048576\\) raised IndexError"):
        rk.fingerprint(cached, 16)
    assert rk.fingerprint(cached, 16, max_position=4095).spec == rk.RopeSpec(head_dim=16)
    with pytest.raises(rk.RopeShapeError, match="shape"):
        rk.fingerprint(lambda x, p: x[:, :4], 16)
    with pytest.raises(rk.RopeShapeError, match="head_dim"):
        rk.fingerprint(lambda x, p: x, 0)


def test_precision_hf_vs_exact_long_positions():
    # the same spec, float64 tables vs transformers' float32 tables: both recovered, told apart
    spec = rk.RopeSpec(head_dim=128, base=500000.0)
    exact = rk.fingerprint(spec_rope_fn(spec, precision="exact"), 128)
    hf = rk.fingerprint(rk.zoo.hf_rotate_half(128, 500000.0), 128)
    assert exact.spec == hf.spec == spec
    assert (exact.precision, hf.precision) == ("exact", "hf")
    assert math.isfinite(exact.residual) and exact.residual <= 1.2e-7


def test_ntk_by_alpha_is_a_plain_rope_and_is_named():
    # NTK-by-alpha: base' = base * alpha ** (r / (r - 2)); the same rotation as a plain RoPE of base'
    r, alpha = 128, 8.0
    ntk_base = 10000.0 * alpha ** (r / (r - 2))
    fp = rk.fingerprint(rk.zoo.hf_rotate_half(r, ntk_base), r)
    assert fp.scaling == "plain" and fp.spec.scaling is None
    assert fp.spec.base == pytest.approx(ntk_base, rel=1e-6)
    assert any("NTK-by-alpha of base 10000 with alpha=8" in n for n in fp.notes), fp.notes
    # an ordinary base gets no such note
    assert not any("NTK" in n for n in rk.fingerprint(rk.zoo.hf_rotate_half(r, 20000.0), r).notes)


# transformers' own LlamaRotaryEmbedding + apply_rotary_pos_emb as the black box: the strongest
# oracle there is (its tables are cast to the activation dtype, its arithmetic runs in that dtype)
HF_CASES = [
    ({"rope_type": "default", "rope_theta": 10000.0}, rk.RopeSpec(head_dim=64, base=10000.0)),
    (
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        rk.RopeSpec(head_dim=64, base=10000.0, scaling=rk.Linear(factor=4.0)),
    ),
    (
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        rk.RopeSpec(head_dim=64, base=500000.0, scaling=L31),
    ),
    (
        {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 1024},
        rk.RopeSpec(head_dim=64, base=1e6, scaling=rk.Yarn(factor=4.0, original_max_position_embeddings=1024)),
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("params, want", HF_CASES, ids=[c[0]["rope_type"] for c in HF_CASES])
def test_transformers_llama_rope_is_recovered(params, want, dtype):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as ml

    cfg = transformers.LlamaConfig(
        hidden_size=256, num_attention_heads=4, max_position_embeddings=32768, rope_parameters=params
    )
    emb = ml.LlamaRotaryEmbedding(cfg)

    def fn(x, positions):
        q = x[None, None]  # [batch 1, heads 1, n, head_dim]
        cos, sin = emb(q, positions[None])
        return ml.apply_rotary_pos_emb(q, q, cos, sin)[0][0, 0]

    fp = rk.fingerprint(fn, 64, dtype=dtype)
    assert fp.spec == want, fp.summary()
    assert (fp.offset, fp.direction, fp.precision) == (0, 1, "hf")
    assert fp.residual <= torch.finfo(dtype).eps


def _rounded_rope(head_dim, base, mode, dtype, factor=1.0):
    """transformers' rotate_half with a precision bug, written here: inv_freq rounded to dtype
    (a buffer that followed model.to(dtype)) or position * inv_freq computed in dtype."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)) / factor

    def fn(x, positions):
        if mode == "inv_freq":
            ang = positions.float()[:, None] * inv.to(dtype).float()[None]
        else:
            ang = (positions.to(dtype)[:, None] * inv.to(dtype)[None]).float()
        c, s = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
        x1, x2 = x[:, : head_dim // 2].float(), x[:, head_dim // 2 :].float()
        return (x.float() * c + torch.cat((-x2, x1), -1) * s).to(x.dtype)

    return fn


@pytest.mark.parametrize("mode", ["inv_freq", "angles"])
@pytest.mark.parametrize(
    "dtype, base, factor",
    [(torch.bfloat16, 10000.0, 1.0), (torch.bfloat16, 500000.0, 4.0), (torch.float16, 10000.0, 1.0)],
)
def test_low_precision_frequencies_are_a_precision_bug_not_a_scaling(mode, dtype, base, factor):
    # a per-pair (longrope-like) fit would "explain" rounded frequencies; the doctor must say what happened
    fn = _rounded_rope(64, base, mode, dtype, factor)
    # float16 positions overflow past 65504: such an fn can only be probed below that, and says so
    max_position = 16384 if (mode, dtype) == ("angles", torch.float16) else 2**20
    if max_position < 2**20:
        with pytest.raises(rk.RopeError, match="first at position 65536.*max_position"):
            rk.fingerprint(fn, 64)
    fp = rk.fingerprint(fn, 64, max_position=max_position)
    scaling = rk.Linear(factor=factor) if factor != 1.0 else None
    assert fp.spec == rk.RopeSpec(head_dim=64, base=base, scaling=scaling), fp.summary()
    name = str(dtype).replace("torch.", "")
    assert fp.precision == f"{mode}:{name}"
    assert any(name in n for n in fp.notes)
    rep = rk.compare(
        rk.zoo.hf_rotate_half(64, base)
        if factor == 1.0
        else spec_rope_fn(rk.RopeSpec(head_dim=64, base=base, scaling=scaling), precision="hf"),
        fn,
        64,
        max_position=max_position,
    )
    assert not rep.equivalent and not rep.precision_only and [d.field for d in rep.differences] == ["precision"]
    assert "precision bug" in rep.explanation and "float32" in rep.fix
    assert rep.fix_verified is True


def test_transformers_dynamic_ntk_depends_on_the_probed_length():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as ml

    cfg = transformers.LlamaConfig(
        hidden_size=256,
        num_attention_heads=4,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    )
    emb = ml.LlamaRotaryEmbedding(cfg)

    def fn(x, positions):
        q = x[None, None]
        cos, sin = emb(q, positions[None])
        return ml.apply_rotary_pos_emb(q, q, cos, sin)[0][0, 0]

    # within the original context: the plain RoPE
    assert rk.fingerprint(fn, 64, max_position=4095).spec == rk.RopeSpec(head_dim=64, base=10000.0)
    # one call up to 2**20: transformers' dynamic base, alpha = 2 * 2**20 / 4096 - 1 (to 5e-4) = 511
    fp = rk.fingerprint(fn, 64)
    assert fp.spec.scaling is None and fp.spec.base == pytest.approx(10000.0 * 511 ** (64 / 62), rel=1e-5)
    assert any("NTK-by-alpha of base 10000 with alpha=511" in n for n in fp.notes), fp.notes


# ---------------------------------------------------------------------------------------------
# any precision: a RoPE rounded inside a wider interface
# ---------------------------------------------------------------------------------------------


def _rounded_inside(fn, inside):
    """fn computed with its inputs and outputs rounded to ``inside``, returned as float32."""
    return lambda x, p: fn(x.to(inside).float(), p).to(inside).float()


def test_the_issue_case_neox_partial_in_bf16_is_a_rope():
    # head_dim 256, NeoX-style partial rotary, rounded to bf16 inside: "not linear" by 28600 ulps before
    fp = rk.fingerprint(rk.zoo.neox_bf16_inside(256), head_dim=256)
    assert fp.spec == rk.RopeSpec(head_dim=256, rotary_dim=64, base=10000.0, layout="half"), fp.reason
    assert fp.dtype == torch.float32 and fp.output_precision == "bfloat16" and fp.significand_bits == 8
    # its noise against the fitted rotation is bf16 rounding: at most an ulp of bf16
    assert 0 < fp.noise_ulps <= 1.0


@settings(max_examples=12, deadline=None)
@given(st.data(), st.sampled_from([torch.bfloat16, torch.float16]))
def test_random_spec_rounded_inside_recovered(data, inside):
    spec, offset = data.draw(random_specs(torch.bfloat16))
    fn = _rounded_inside(spec_rope_fn(spec, offset=offset), inside)
    fp = rk.fingerprint(fn, spec.head_dim)
    _check_recovered(fp, spec, offset, torch.bfloat16)
    assert fp.output_precision == str(inside)[6:] and fp.dtype == torch.float32


@pytest.mark.parametrize("inside", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda x, p: x * 2, "not passed through"),
        (lambda x, p: x.flip(-1), "not as a rotation"),
        (lambda x, p: torch.tanh(x), "not passed through"),  # tanh(e_j) = 0.76 e_j
        (lambda x, p: torch.cat((x[:, :8] * 1.05, x[:, 8:]), -1), "not passed through"),
    ],
)
def test_non_rotations_rounded_inside_are_still_refused(fn, words, inside):
    fp = rk.fingerprint(_rounded_inside(fn, inside), 32)
    assert fp.spec is None and words in fp.reason


def test_a_rotation_scaled_unevenly_in_bf16_is_refused():
    # pair 0 scaled by 1.02 (8 bf16 ulps): a rounding-aware fit must not absorb it
    inner = spec_rope_fn(rk.RopeSpec(head_dim=16))

    def uneven(x, p):
        y = inner(x, p)
        y[:, [0, 8]] *= 1.02
        return y.bfloat16().float()

    fp = rk.fingerprint(uneven, 16)
    assert fp.spec is None and "unevenly" in fp.reason


def test_float32_outputs_are_not_called_rounded():
    fp = rk.fingerprint(rk.zoo.hf_rotate_half(64), 64)
    assert (fp.output_precision, fp.significand_bits, fp.rounded_inside) == ("float32", 24, False)
    assert fp.noise_ulps <= 1.0


# ---------------------------------------------------------------------------------------------
# every input checked, every call on its own copy, twice
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"head_dim": 10**6}, rk.RopeShapeError, "head_dim=1000000 must be an integer from 2 to"),
        ({"head_dim": 16.0}, rk.RopeShapeError, "head_dim=16.0"),
        ({"max_position": 8}, rk.RopeArgumentError, "max_position=8"),
        ({"max_position": 2**40}, rk.RopeArgumentError, "max_position=1099511627776"),
        ({"max_position": 1e6}, rk.RopeArgumentError, "max_position=1000000.0"),
        ({"dtype": torch.int32}, rk.RopeArgumentError, "dtype=torch.int32"),
        ({"dtype": "float32"}, rk.RopeArgumentError, "dtype='float32'"),
        ({"dtype": torch.float8_e4m3fn}, rk.RopeArgumentError, "dtype=torch.float8_e4m3fn"),
        ({"seed": -1}, rk.RopeArgumentError, "seed=-1"),
        ({"seed": 2**64}, rk.RopeArgumentError, "seed=18446744073709551616"),
        ({"seed": "a"}, rk.RopeArgumentError, "seed='a'"),
    ],
)
def test_bad_parameters_are_one_error_naming_them(kwargs, error, words):
    args = {"head_dim": 16} | kwargs
    with pytest.raises(error) as exc:
        rk.fingerprint(rk.zoo.hf_rotate_half(16), args.pop("head_dim"), **args)
    assert words in str(exc.value) and len(str(exc.value)) < 300


def test_meta_outputs_are_refused():
    with pytest.raises(rk.RopeArgumentError, match="returned a meta tensor"):
        rk.fingerprint(lambda x, p: torch.empty_like(x, device="meta"), 16)


def test_a_function_that_is_not_deterministic_is_named():
    inner, calls = rk.zoo.hf_rotate_half(16), []

    def noisy(x, p):  # state kept between calls: every other call is one position ahead
        calls.append(None)
        return inner(x, p + len(calls) % 2)

    with pytest.raises(rk.RopeArgumentError, match="fn is not deterministic"):
        rk.fingerprint(noisy, 16)


def test_an_in_place_function_is_fingerprinted_on_its_own_copy():
    inner = rk.zoo.hf_rotate_half(16)
    seen = []

    def in_place(x, p):
        seen.append(p.clone())
        x.copy_(inner(x, p))
        p.zero_()  # a rude function: it must not change what the next call sees
        return x

    fp = rk.fingerprint(in_place, 16)
    assert fp.spec == rk.RopeSpec(head_dim=16) and torch.equal(seen[0], seen[1])
