"""RotaryEmbedding as a drop-in for transformers' rotary module."""

import pytest
import torch

import ropekit as rk

import tiny_models as tm

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from transformers import LlamaForCausalLM  # noqa: E402


def _llama_config(**rope):
    rope = {"rope_type": "default", "rope_theta": 10000.0, **rope}
    return tm.config_for("llama", max_position_embeddings=128, rope_parameters=rope)


def _spec(cfg):
    rp = cfg.rope_parameters
    scaling = None
    if rp["rope_type"] == "llama3":
        scaling = rk.Llama3(
            rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
        )
    return rk.RopeSpec(head_dim=cfg.hidden_size // cfg.num_attention_heads, base=rp["rope_theta"], scaling=scaling)


@pytest.mark.parametrize(
    "rope",
    [
        {},
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_precision_is_bit_identical_to_transformers_module(rope, dtype):
    cfg = _llama_config(**rope)
    theirs = LlamaRotaryEmbedding(cfg)
    ours = rk.RotaryEmbedding(spec=_spec(cfg), precision="hf")
    x = torch.zeros(1, dtype=dtype)
    pos = torch.tensor([[0, 1, 2, 500, 4095], [7, 8, 9, 10, 70000]])
    for a, b in zip(theirs(x, pos), ours(x, pos)):
        assert a.dtype == b.dtype == dtype
        assert torch.equal(a, b)


def test_exact_precision_is_closer_to_fp64_than_transformers():
    cfg = _llama_config()
    pos = torch.tensor([[1_000_000, 3_000_000]])
    inv = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    truth = torch.cos(pos[..., None].double() * inv)
    theirs, _ = LlamaRotaryEmbedding(cfg)(torch.zeros(1), pos)
    ours, _ = rk.RotaryEmbedding(spec=_spec(cfg))(torch.zeros(1), pos)
    err_theirs = (theirs[..., :8].double() - truth).abs().max().item()
    err_ours = (ours[..., :8].double() - truth).abs().max().item()
    assert err_ours <= 6e-8 < 1e-3 < err_theirs


def test_drop_in_gives_identical_logits_and_survives_bf16_cast():
    torch.manual_seed(0)
    cfg = _llama_config()
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        reference = model(ids).logits
        model.model.rotary_emb = rk.RotaryEmbedding(spec=_spec(cfg), precision="hf")
        assert torch.equal(model(ids).logits, reference)
        # a transformers module would now hold bf16 inv_freq; ours has no buffer to cast
        model.to(torch.bfloat16)
        assert not list(model.model.rotary_emb.buffers())
        cos, _ = model.model.rotary_emb(torch.zeros(1, dtype=torch.bfloat16), torch.tensor([[1000]]))
        truth = torch.cos(1000 * 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16))
        assert (cos[0, 0, :8].double() - truth).abs().max().item() <= 2**-8  # one bf16 rounding only


def test_legacy_seq_len_forward_and_errors():
    rope = rk.RotaryEmbedding(spec=rk.RopeSpec(head_dim=8, layout="interleaved"), duplicate="repeat")
    cos, sin = rope(torch.zeros(1), seq_len=5)
    assert cos.shape == (5, 8)
    assert torch.equal(cos[:, 0::2], cos[:, 1::2])  # repeat_interleave duplication (Cohere)
    with pytest.raises(rk.RopeError, match="position_ids"):
        rope(torch.zeros(1))
    with pytest.raises(rk.RopeError, match="layer_type='sliding'"):
        rope(torch.zeros(1), torch.arange(3)[None], "sliding")
    with pytest.raises(rk.RopeError, match="exactly one of config=, spec= or dim="):
        rk.RotaryEmbedding()
