"""The reference rotation against the independent fp64 oracle, over layouts x partial rotary x
dtypes x formats x position forms, plus in-place and error behaviour."""

import pytest
import torch

import ropekit as rk

from oracle import assert_close_to, rope_fp64

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _spec(head_dim, frac, layout):
    return rk.RopeSpec(head_dim=head_dim, rotary_dim=int(head_dim * frac) // 2 * 2, base=10000.0, layout=layout)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("frac", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("format", ["bshd", "bhsd"])
def test_matches_oracle(layout, frac, dtype, format):
    torch.manual_seed(0)
    B, S, H, D = 2, 7, 3, 80
    spec = _spec(D, frac, layout)
    cos, sin = rk.cos_sin(spec, 64, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.randn(B, S, H, D, dtype=torch.float64).to(dtype)
    offsets = torch.tensor([0, 9])
    xin = x if format == "bshd" else x.transpose(1, 2).contiguous()
    y = rk.apply_rope(xin, cos, sin, layout=layout, format=format, offsets=offsets)
    if format == "bhsd":
        y = y.transpose(1, 2)
    inv, _ = rk.inv_freq(spec)
    positions = (torch.arange(S)[None] + offsets[:, None])[:, :, None]  # broadcast over heads
    expected = rope_fp64(x, inv, positions.squeeze(-1), layout)
    assert y.dtype == dtype
    assert_close_to(y, expected)
    # the tail is passed through bit-identically
    assert torch.equal(y[..., spec.rotary_dim :], x[..., spec.rotary_dim :])


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_positions_forms_agree(layout):
    torch.manual_seed(1)
    spec = _spec(64, 1.0, layout)
    cos, sin = rk.cos_sin(spec, 100)
    x = torch.randn(2, 5, 4, 64)
    pos = torch.tensor([[3, 4, 5, 6, 7], [10, 11, 12, 13, 14]])
    by_positions = rk.apply_rope(x, cos, sin, layout=layout, positions=pos)
    by_offsets = rk.apply_rope(x, cos, sin, layout=layout, offsets=torch.tensor([3, 10]))
    torch.testing.assert_close(by_positions, by_offsets, rtol=0, atol=0)
    gathered_cos, gathered_sin = cos[pos], sin[pos]  # a per-batch table
    by_table = rk.apply_rope(x, gathered_cos, gathered_sin, layout=layout)
    torch.testing.assert_close(by_positions, by_table, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_thd_with_cu_seqlens_equals_per_sequence(layout):
    torch.manual_seed(2)
    spec = _spec(32, 0.5, layout)
    cos, sin = rk.cos_sin(spec, 50)
    lengths = [3, 1, 6]
    x = torch.randn(sum(lengths), 5, 32)
    cu = torch.tensor([0, 3, 4, 10])
    y = rk.apply_rope(x, cos, sin, layout=layout, format="thd", cu_seqlens=cu, offsets=torch.tensor([0, 7, 2]))
    start = 0
    for n, off in zip(lengths, [0, 7, 2]):
        one = rk.apply_rope(x[start : start + n][None], cos, sin, layout=layout, offsets=off)[0]
        torch.testing.assert_close(y[start : start + n], one, rtol=0, atol=0)
        start += n


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_partial_leaves_tail_and_matches_out_of_place(layout, dtype):
    torch.manual_seed(3)
    spec = _spec(96, 0.25, layout)
    cos, sin = rk.cos_sin(spec, 16)
    x = torch.randn(1, 16, 2, 96).to(dtype)
    expected = rk.apply_rope(x, cos, sin, layout=layout)
    tail_before = x[..., spec.rotary_dim :].clone()
    out = rk.apply_rope(x, cos, sin, layout=layout, inplace=True)
    assert out is x
    assert torch.equal(x, expected)
    assert torch.equal(x[..., spec.rotary_dim :], tail_before)


def test_inverse_restores_input_and_autograd_works():
    spec = _spec(16, 1.0, "half")
    cos, sin = rk.cos_sin(spec, 8, dtype=torch.float64)
    x = torch.randn(1, 8, 2, 16, dtype=torch.float64, requires_grad=True)
    y = rk.apply_rope(x, cos, sin)
    torch.testing.assert_close(rk.apply_rope(y, cos, sin, inverse=True), x, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(lambda t: rk.apply_rope(t, cos, sin, layout="interleaved"), (x,))


def test_apply_rope_qk_gqa_matches_separate_calls():
    spec = _spec(64, 1.0, "half")
    cos, sin = rk.cos_sin(spec, 10)
    q, k = torch.randn(2, 10, 8, 64), torch.randn(2, 10, 2, 64)
    q2, k2 = rk.apply_rope_qk(q, k, cos, sin)
    assert torch.equal(q2, rk.apply_rope(q, cos, sin)) and torch.equal(k2, rk.apply_rope(k, cos, sin))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, c, s: rk.apply_rope(x, c, s, format="bsdh"), "format='bsdh'"),
        (lambda x, c, s: rk.apply_rope(x[0], c, s), r"x \[4, 2, 8\] has 3 dims"),
        (lambda x, c, s: rk.apply_rope(x, c[:, :2], s), r"cos \[4, 2\] and sin \[4, 4\]"),
        (lambda x, c, s: rk.apply_rope(x, torch.cat([c, c], -1), torch.cat([s, s], -1)), "rotates 16 dims"),
        (lambda x, c, s: rk.apply_rope(x.int(), c, s), "dtype torch.int32"),
        (lambda x, c, s: rk.apply_rope(x, c, s, offsets=1), "needs table row 4 but cos/sin have 4 rows"),
        (lambda x, c, s: rk.apply_rope(x, c, s, positions=torch.tensor([0, 1])), r"positions \[2\] does not match"),
        (lambda x, c, s: rk.apply_rope(x, c, s, positions=torch.tensor([0, -1, 2, 3])), "-1"),
        (lambda x, c, s: rk.apply_rope(x, c, s, layout="rotate"), "layout='rotate'"),
        (lambda x, c, s: rk.apply_rope(x, c, s, backend="cuda-magic"), "backend='cuda-magic'"),
        (lambda x, c, s: rk.apply_rope_qk(x, x[:, :2], c, s), r"q \[1, 4, 2, 8\] and k \[1, 2, 2, 8\]"),
    ],
)
def test_bad_input_raises_ropekit_error_naming_the_problem(call, match):
    spec = rk.RopeSpec(head_dim=8)
    cos, sin = rk.cos_sin(spec, 4)
    with pytest.raises(rk.RopeError, match=match):
        call(torch.randn(1, 4, 2, 8), cos, sin)
