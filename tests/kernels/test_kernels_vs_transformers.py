"""Every backend against transformers' own Llama rotary code (the strongest oracle): the cos/sin
that ``LlamaRotaryEmbedding`` produces, in its compact half, through ``apply_rope_qk`` in
transformers' bhsd format, equal ``apply_rotary_pos_emb`` in float32."""

import pytest
import torch

import ropekit as rk

import tiny_models as tm

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_backends_match_transformers_llama(backend):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    heads = dict(hidden_size=320, num_attention_heads=5, num_key_value_heads=1, head_dim=64)
    config = tm.config_for("llama", **heads, rope_theta=500000.0, max_position_embeddings=4096)
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 5, 7, 64, generator=g)  # bhsd, odd head count
    k = torch.randn(2, 1, 7, 64, generator=g)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [100, 101, 102, 103, 3000, 3001, 4095]])
    cos, sin = LlamaRotaryEmbedding(config)(q, position_ids)  # [B, S, 64], halves duplicated
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)

    # the compact half of transformers' own table, one row per token (a per-batch table)
    got_q, got_k = rk.apply_rope_qk(q, k, cos[..., :32], sin[..., :32], format="bhsd", backend=backend)
    if backend == "reference":  # the same float32 operations in the same order: bit for bit
        assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    else:  # fused kernels may contract a * b + c into one rounding: a few fp32 ulp
        for got, want in ((got_q, want_q), (got_k, want_k)):
            assert (got - want).abs().max().item() <= 4 * torch.finfo(torch.float32).eps * want.abs().max().item()
