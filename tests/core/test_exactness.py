"""precision="exact" against an independent high-precision ground truth, every scaling type, up to
position 2**24; and, for contrast, how far transformers' float32 table is from the truth at 1M.

The ground truth is written here from the defining formula of each scaling, in mpmath at 40 digits:
frequencies, the angle p * inv_freq and its reduction mod 2 pi are exact to ~1e-35, so the only error
left is the final float64 cos/sin of a reduced angle (~1e-16).  Nothing is imported from ropekit's
frequency or table code.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

import ropekit as rk
from ropekit.spec import Dynamic, Linear, Llama3, LongRope, Proportional, Yarn

mpmath.mp.dps = 40
TWO_PI = 2 * mpmath.pi

EXACT_BOUND = 1.2e-7  # fp32: half an ulp of values up to ~2 (yarn attention factors) plus fp64 angle error
POSITIONS = sorted(
    {0, 1, 2, 3, 7, 100, 4095, 4096, 4097, 65535, 1_000_000, 3_333_333, 2**23 + 1, 2**24 - 1, 2**24}
    | {int(x) for x in torch.randint(0, 2**24, (24,), generator=torch.Generator().manual_seed(0))}
)


# ---------------------------------------------------------------------------------------------
# the ground truth, from the formulas
# ---------------------------------------------------------------------------------------------


def _plain(i: int, base, dim: int):
    return mpmath.mpf(base) ** (-mpmath.mpf(2 * i) / dim)


def _mscale(scale, m=1):
    return mpmath.mpf(1) if scale <= 1 else mpmath.mpf("0.1") * m * mpmath.log(scale) + 1


def truth_inv_freq(spec: rk.RopeSpec, seq_len: int):
    r, s, base = spec.rotary_dim, spec.scaling, mpmath.mpf(spec.base)
    n = r // 2
    if s is None:
        return [_plain(i, base, r) for i in range(n)]
    if isinstance(s, Linear):
        return [_plain(i, base, r) / s.factor for i in range(n)]
    if isinstance(s, Dynamic):  # NTK: the base grows with the sequence beyond the original context
        length = max(seq_len, s.original_max_position_embeddings)
        grown = base * (mpmath.mpf(s.factor) * length / s.original_max_position_embeddings - (s.factor - 1)) ** (
            mpmath.mpf(r) / (r - 2)
        )
        return [_plain(i, grown, r) for i in range(n)]
    if isinstance(s, Yarn):  # blend interpolation (inv / factor) and extrapolation (inv) over a linear ramp

        def dim_of(rotations):
            return r * mpmath.log(s.original_max_position_embeddings / (rotations * TWO_PI)) / (2 * mpmath.log(base))

        low, high = dim_of(s.beta_fast), dim_of(s.beta_slow)
        if s.truncate:
            low, high = mpmath.floor(low), mpmath.ceil(high)
        low, high = max(low, 0), min(high, r - 1)
        if low == high:
            high += mpmath.mpf("0.001")
        out = []
        for i in range(n):
            ramp = min(max((i - low) / (high - low), 0), 1)  # 0: keep the frequency, 1: interpolate
            inv = _plain(i, base, r)
            out.append(inv / s.factor * ramp + inv * (1 - ramp))
        return out
    if isinstance(s, LongRope):
        ext = s.long_factor if seq_len > s.original_max_position_embeddings else s.short_factor
        return [_plain(i, base, r) / mpmath.mpf(ext[i]) for i in range(n)]
    if isinstance(s, Llama3):
        out = []
        for i in range(n):
            inv = _plain(i, base, r)
            wavelen = TWO_PI / inv
            if wavelen < s.original_max_position_embeddings / s.high_freq_factor:
                out.append(inv)
            elif wavelen > s.original_max_position_embeddings / s.low_freq_factor:
                out.append(inv / s.factor)
            else:
                smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                    s.high_freq_factor - s.low_freq_factor
                )
                out.append((1 - smooth) * inv / s.factor + smooth * inv)
        return out
    if isinstance(s, Proportional):  # exponents over head_dim; only the first pairs turn
        turning = int(s.partial_rotary_factor * spec.head_dim // 2)
        return [_plain(i, base, spec.head_dim) / s.factor if i < turning else mpmath.mpf(0) for i in range(n)]
    raise AssertionError(s)


def truth_attention(spec: rk.RopeSpec):
    if spec.attention_factor is not None:
        return mpmath.mpf(spec.attention_factor)
    s = spec.scaling
    if isinstance(s, Yarn):
        if s.mscale and s.mscale_all_dim:
            return _mscale(s.factor, s.mscale) / _mscale(s.factor, s.mscale_all_dim)
        return _mscale(s.factor)
    if isinstance(s, LongRope):
        if s.factor <= 1:
            return mpmath.mpf(1)
        return mpmath.sqrt(1 + mpmath.log(s.factor) / mpmath.log(s.original_max_position_embeddings))
    return mpmath.mpf(1)


def truth_cos_sin(spec: rk.RopeSpec, positions: list[int], seq_len: int):
    inv = truth_inv_freq(spec, seq_len)
    factor = truth_attention(spec)
    cos = torch.empty(len(positions), len(inv), dtype=torch.float64)
    sin = torch.empty_like(cos)
    for row, p in enumerate(positions):
        for col, f in enumerate(inv):
            angle = mpmath.fmod(p * f, TWO_PI)  # exact reduction: the float64 trig sees a small angle
            cos[row, col] = float(mpmath.cos(angle) * factor)
            sin[row, col] = float(mpmath.sin(angle) * factor)
    return cos, sin


# ---------------------------------------------------------------------------------------------
# every scaling type
# ---------------------------------------------------------------------------------------------

LONG64 = tuple(1.0 + 0.5 * i for i in range(32))
SHORT64 = tuple(1.0 + 0.01 * i for i in range(32))
SPECS = {
    "default": rk.RopeSpec(head_dim=64),
    "default-base5e5-partial": rk.RopeSpec(head_dim=128, rotary_dim=64, base=500000.0),
    "linear": rk.RopeSpec(head_dim=64, scaling=Linear(4.0)),
    "dynamic": rk.RopeSpec(head_dim=64, scaling=Dynamic(2.0, 4096)),
    "yarn": rk.RopeSpec(head_dim=64, base=1e6, scaling=Yarn(32.0, 4096)),
    "yarn-deepseek-mscale": rk.RopeSpec(head_dim=64, scaling=Yarn(40.0, 4096, mscale=1.0, mscale_all_dim=0.707)),
    "yarn-notruncate": rk.RopeSpec(head_dim=64, base=150000.0, scaling=Yarn(32.0, 4096, truncate=False)),
    "longrope": rk.RopeSpec(head_dim=64, scaling=LongRope(SHORT64, LONG64, 4096, factor=32.0)),
    "llama3": rk.RopeSpec(head_dim=64, base=500000.0, scaling=Llama3(8.0, 1.0, 4.0, 8192)),
    "proportional": rk.RopeSpec(head_dim=64, scaling=Proportional(0.25, 2.0)),
    "attention-override": rk.RopeSpec(head_dim=64, scaling=Yarn(4.0, 4096), attention_factor=1.5),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_exact_tables_are_within_half_an_fp32_ulp_up_to_2_24(name):
    spec = SPECS[name]
    seq_len = max(POSITIONS) + 1
    cos_t, sin_t = truth_cos_sin(spec, POSITIONS, seq_len)
    cos, sin = rk.cos_sin(spec, torch.tensor(POSITIONS), dtype=torch.float32, precision="exact")
    err = max((cos.double() - cos_t).abs().max().item(), (sin.double() - sin_t).abs().max().item())
    assert err <= EXACT_BOUND, f"{name}: max abs error {err:.3e}"
    # float64 output: no final rounding, only the float64 angle error (< 1e-8 at 2**24)
    cos64, sin64 = rk.cos_sin(spec, torch.tensor(POSITIONS), dtype=torch.float64, precision="exact")
    err64 = max((cos64 - cos_t).abs().max().item(), (sin64 - sin_t).abs().max().item())
    assert err64 <= 1e-8, f"{name}: float64 max abs error {err64:.3e}"


def test_the_truth_is_not_ropekit_itself():
    # sanity of the oracle: a known value by hand (position 1, pair 0: angle 1 rad)
    cos_t, sin_t = truth_cos_sin(SPECS["default"], [1], 2)
    assert cos_t[0, 0].item() == math.cos(1.0) and sin_t[0, 0].item() == math.sin(1.0)
    # and a wrong spec is caught by the bound (so the comparison can fail)
    cos_t, _ = truth_cos_sin(SPECS["llama3"], POSITIONS, max(POSITIONS) + 1)
    wrong = rk.RopeSpec(head_dim=64, base=500000.0, scaling=Llama3(8.0, 1.0, 4.0, 8191))
    cos, _ = rk.cos_sin(wrong, torch.tensor(POSITIONS), precision="exact")
    assert (cos.double() - cos_t).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------------
# the contrast: transformers' float32 table at 1M positions
# ---------------------------------------------------------------------------------------------


def test_transformers_table_error_at_1m_positions_for_contrast():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = transformers.LlamaConfig(
        hidden_size=512, num_attention_heads=4, max_position_embeddings=8192, rope_theta=500000.0
    )
    spec = rk.from_config(config)
    positions = [2**20 - 1, 2**20, 1_000_003, 1_048_000, 1_048_575]
    cos_t, _ = truth_cos_sin(spec, positions, max(positions) + 1)
    hf_cos, _ = LlamaRotaryEmbedding(config)(torch.zeros(1), torch.tensor([positions]))
    hf_err = (hf_cos[0, :, : spec.n_pairs].double() - cos_t).abs().max().item()
    cos, _ = rk.cos_sin(spec, torch.tensor(positions), precision="exact")
    ours = (cos.double() - cos_t).abs().max().item()
    assert hf_err > 1e-3, f"transformers' float32 table error at 1M: {hf_err:.3e}"
    assert ours <= EXACT_BOUND and hf_err > 1000 * ours


# ---------------------------------------------------------------------------------------------
# random specs (hypothesis): the bound holds across every scaling's parameter range
# ---------------------------------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def random_specs(draw):
    n = draw(st.integers(min_value=2, max_value=32))
    orig = draw(st.integers(min_value=16, max_value=2**16))
    factor = draw(st.floats(min_value=1.0, max_value=64.0))
    kind = draw(st.sampled_from(["none", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional"]))
    scaling = {
        "none": None,
        "linear": Linear(factor),
        "dynamic": Dynamic(factor, orig),
        "yarn": Yarn(
            factor,
            orig,
            beta_fast=draw(st.floats(4.0, 64.0)),
            beta_slow=draw(st.floats(0.25, 4.0)),
            mscale=draw(st.none() | st.floats(0.1, 2.0)),
            mscale_all_dim=draw(st.none() | st.floats(0.1, 2.0)),
            truncate=draw(st.booleans()),
        ),
        "longrope": LongRope(
            tuple(draw(st.lists(st.floats(0.5, 4.0), min_size=n, max_size=n))),
            tuple(draw(st.lists(st.floats(1.0, 80.0), min_size=n, max_size=n))),
            orig,
            factor=factor,
        ),
        "llama3": Llama3(factor, 1.0, 1.0 + draw(st.floats(0.5, 8.0)), orig),
        "proportional": Proportional(draw(st.floats(0.0, 1.0)), draw(st.floats(0.5, 4.0))),
    }[kind]
    tail = 0 if kind == "proportional" else 2 * draw(st.integers(0, 4))
    return rk.RopeSpec(head_dim=2 * n + tail, rotary_dim=2 * n, base=draw(st.floats(2.0, 1e7)), scaling=scaling)


@given(random_specs(), st.lists(st.integers(0, 2**24), min_size=1, max_size=6))
def test_random_specs_exact_within_bound(spec, positions):
    seq_len = max(positions) + 1
    cos_t, sin_t = truth_cos_sin(spec, positions, seq_len)
    cos, sin = rk.cos_sin(spec, torch.tensor(positions), precision="exact")
    bound = EXACT_BOUND * max(1.0, float(truth_attention(spec)))  # half an ulp scales with the values
    err = max((cos.double() - cos_t).abs().max().item(), (sin.double() - sin_t).abs().max().item())
    assert err <= bound, f"{spec.describe()}: {err:.3e}"
