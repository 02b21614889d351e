"""permute_qk and the fused-projection helpers: against transformers' GGUF loader (an independent
implementation of the same permutation), against the fp64 oracle rotation (the permutation must make
half-layout rotation of the new rows equal interleaved rotation of the old ones), exact inverses,
and loud failures on wrong head counts."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ropekit as rk
from ropekit.permute import (
    layout_index,
    permute_glm_qkv,
    permute_mla_kv_a,
    permute_mla_q,
    permute_neox_qkv,
    permute_phi3_qkv,
)

from oracle import rope_fp64


def _gguf_reverse(w: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor(config={"num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads})
    return torch.from_numpy(np.ascontiguousarray(proc._reverse_permute_weights(w.numpy(), n_heads, n_kv_heads)))


@pytest.mark.parametrize("n_heads,n_kv,head_dim", [(8, 2, 16), (4, 4, 8), (6, 1, 32), (12, 3, 10)])
@pytest.mark.parametrize("kind", ["weight", "bias", "lora_b"])
def test_matches_transformers_gguf_reverse_permutation(n_heads, n_kv, head_dim, kind):
    torch.manual_seed(0)
    cols = {"weight": (24,), "bias": (), "lora_b": (4,)}[kind]
    wq = torch.randn(n_heads * head_dim, *cols)
    wk = torch.randn(n_kv * head_dim, *cols)
    # GGUF stores q/k interleaved (llama.cpp permuted them); the loader undoes that into HF's half
    assert torch.equal(rk.permute_qk(wq, n_heads, head_dim), _gguf_reverse(wq, n_heads, n_heads))
    assert torch.equal(rk.permute_qk(wk, n_kv, head_dim), _gguf_reverse(wk, n_heads, n_kv))
    # and the opposite direction is its exact inverse
    back = rk.permute_qk(_gguf_reverse(wk, n_heads, n_kv), n_kv, head_dim, src="half", dst="interleaved")
    assert torch.equal(back, wk)


@pytest.mark.parametrize("rotary_frac", [1.0, 0.5, 0.25])
def test_half_rotation_of_permuted_rows_equals_interleaved_rotation(rotary_frac):
    """The defining property, measured with the independent fp64 oracle: rotating W'x in the half
    layout gives the rows of (rotating Wx in the interleaved layout), reordered; scores q.k agree."""
    torch.manual_seed(1)
    n_heads, n_kv, head_dim, hidden, T = 4, 2, 16, 32, 9
    r = int(head_dim * rotary_frac)
    inv = 10000.0 ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    pos = torch.arange(T, dtype=torch.float64) * 7
    x = torch.randn(T, hidden, dtype=torch.float64)
    wq, wk = (
        torch.randn(n_heads * head_dim, hidden, dtype=torch.float64),
        torch.randn(n_kv * head_dim, hidden, dtype=torch.float64),
    )
    bq = torch.randn(n_heads * head_dim, dtype=torch.float64)

    def project(w, b, h):
        y = x @ w.T + (0 if b is None else b)
        return y.view(T, h, head_dim)

    q_int = rope_fp64(project(wq, bq, n_heads), inv, pos, "interleaved")
    k_int = rope_fp64(project(wk, None, n_kv), inv, pos, "interleaved")
    wq2, bq2 = rk.permute_qk(wq, n_heads, head_dim, r), rk.permute_qk(bq, n_heads, head_dim, r)
    wk2 = rk.permute_qk(wk, n_kv, head_dim, r)
    q_half = rope_fp64(project(wq2, bq2, n_heads), inv, pos, "half")
    k_half = rope_fp64(project(wk2, None, n_kv), inv, pos, "half")

    order = torch.cat((layout_index(r, "interleaved", "half"), torch.arange(r, head_dim)))
    torch.testing.assert_close(q_half, q_int[..., order], rtol=1e-12, atol=1e-12)
    group = n_heads // n_kv
    s_int = torch.einsum("thd,uhd->htu", q_int, k_int.repeat_interleave(group, dim=1))
    s_half = torch.einsum("thd,uhd->htu", q_half, k_half.repeat_interleave(group, dim=1))
    assert (s_int - s_half).abs().max().item() < 1e-10


@given(
    n_heads=st.integers(1, 6),
    head_dim=st.integers(1, 12).map(lambda n: 2 * n),
    rot_pairs=st.integers(0, 12),
    cols=st.sampled_from([(), (3,), (2, 2)]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int8]),
    src=st.sampled_from(["half", "interleaved", "neox", "gptj"]),
    dst=st.sampled_from(["half", "interleaved"]),
)
def test_inverse_is_exact_and_tail_stays(n_heads, head_dim, rot_pairs, cols, dtype, src, dst):
    r = min(2 * rot_pairs, head_dim)
    w = (torch.randn(n_heads * head_dim, *cols) * 50).to(dtype)
    p = rk.permute_qk(w, n_heads, head_dim, r, src=src, dst=dst)
    assert p.dtype == w.dtype and p.shape == w.shape
    assert torch.equal(rk.permute_qk(p, n_heads, head_dim, r, src=dst, dst=src), w)
    heads, heads_p = w.view(n_heads, head_dim, *cols), p.view(n_heads, head_dim, *cols)
    assert torch.equal(heads[:, r:], heads_p[:, r:])  # pass-through rows untouched
    # within each head, the rotary rows are a rearrangement of the same rows
    for h in range(n_heads):
        rows = sorted(tuple(row.reshape(-1).tolist()) for row in heads[h, :r])
        rows_p = sorted(tuple(row.reshape(-1).tolist()) for row in heads_p[h, :r])
        assert rows == rows_p


def test_wrong_head_count_fails_loudly():
    wk = torch.randn(2 * 64, 16)
    with pytest.raises(rk.RopeShapeError, match=r"wk \[128, 16\] has 128 rows but n_heads \* head_dim = 8 \* 64 = 512"):
        rk.permute_qk(wk, n_heads=8, head_dim=64, name="wk")
    with pytest.raises(rk.RopeShapeError, match="rotary_dim=7 must be even"):
        rk.permute_qk(wk, 2, 64, rotary_dim=7)
    with pytest.raises(rk.RopeShapeError, match="rotary_dim=66 must be even and <= head_dim=64"):
        rk.permute_qk(wk, 2, 64, rotary_dim=66)
    with pytest.raises(rk.RopeShapeError, match="n_heads=0"):
        rk.permute_qk(wk, 0, 64)
    with pytest.raises(rk.RopeShapeError, match="scalar"):
        rk.permute_qk(torch.tensor(1.0), 1, 2)
    with pytest.raises(rk.RopeSpecError, match="dst='rowwise' is not a RoPE layout"):
        rk.permute_qk(wk, 2, 64, dst="rowwise")


# ---------------------------------------------------------------------------------------------
# fused projections: built here from separate q, k, v with each family's row packing
# ---------------------------------------------------------------------------------------------


def test_neox_per_head_qkv_equals_permuting_parts():
    torch.manual_seed(2)
    H, D, r, hidden = 3, 8, 4, 5
    q, k, v = (torch.randn(H, D, hidden) for _ in range(3))
    fused = torch.stack((q, k, v), dim=1).reshape(H * 3 * D, hidden)  # GPT-NeoX: per head [q, k, v]
    out = permute_neox_qkv(fused, H, D, r, src="half", dst="interleaved").view(H, 3, D, hidden)
    assert torch.equal(
        out[:, 0].reshape(H * D, hidden), rk.permute_qk(q.reshape(H * D, hidden), H, D, r, "half", "interleaved")
    )
    assert torch.equal(
        out[:, 1].reshape(H * D, hidden), rk.permute_qk(k.reshape(H * D, hidden), H, D, r, "half", "interleaved")
    )
    assert torch.equal(out[:, 2], v)
    bias = torch.randn(H * 3 * D)
    back = permute_neox_qkv(permute_neox_qkv(bias, H, D, r), H, D, r, src="half", dst="interleaved")
    assert torch.equal(back, bias)
    with pytest.raises(rk.RopeShapeError, match=r"has 72 rows but n_heads \* 3 \* head_dim = 4 \* 3 \* 8 = 96"):
        permute_neox_qkv(fused, 4, D)


@pytest.mark.parametrize("helper", [permute_phi3_qkv, permute_glm_qkv])
def test_concatenated_qkv_equals_permuting_parts(helper):
    torch.manual_seed(3)
    H, KV, D, hidden = 4, 2, 8, 6
    q, k, v = torch.randn(H * D, hidden), torch.randn(KV * D, hidden), torch.randn(KV * D, hidden)
    out = helper(torch.cat((q, k, v)), H, KV, D, rotary_dim=4)
    assert torch.equal(out[: H * D], rk.permute_qk(q, H, D, 4))
    assert torch.equal(out[H * D : (H + KV) * D], rk.permute_qk(k, KV, D, 4))
    assert torch.equal(out[(H + KV) * D :], v)
    with pytest.raises(rk.RopeShapeError, match="n_kv_heads"):
        helper(torch.cat((q, k, v)), H, 4, D)


def test_mla_rope_rows_only():
    torch.manual_seed(4)
    H, nope, rope, hidden, rank = 3, 6, 4, 5, 7
    heads = torch.randn(H, nope + rope, hidden)
    out = permute_mla_q(heads.reshape(-1, hidden), H, nope, rope).view(H, nope + rope, hidden)
    assert torch.equal(out[:, :nope], heads[:, :nope])
    assert torch.equal(out[:, nope:].reshape(-1, hidden), rk.permute_qk(heads[:, nope:].reshape(-1, hidden), H, rope))
    kv_a = torch.randn(rank + rope, hidden)
    out = permute_mla_kv_a(kv_a, rank, rope)
    assert torch.equal(out[:rank], kv_a[:rank])
    assert torch.equal(out[rank:], rk.permute_qk(kv_a[rank:], 1, rope))
    assert torch.equal(permute_mla_kv_a(out, rank, rope, src="half", dst="interleaved"), kv_a)
    with pytest.raises(rk.RopeShapeError, match=r"kv_lora_rank \+ qk_rope_head_dim = 8 \+ 4 = 12"):
        permute_mla_kv_a(kv_a, 8, rope)
