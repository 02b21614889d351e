"""infer_layout on weights built with a known pair structure (tests/pair_weights.py); the SmolLM2
tests use a real trained model."""

import pytest
import torch

import ropekit as rk

from pair_weights import pair_structured_qk

H, D, HIDDEN = 8, 32, 48


def _config(**extra):
    return {
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_attention_heads": H,
        "head_dim": D,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
    } | extra


def _weights(layout, rotary_dim, layers=4, seed=0):
    sd = {}
    for i in range(layers):
        q, k = pair_structured_qk(layout, rotary_dim, H, D, HIDDEN, seed=seed + i)
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = q
        sd[f"model.layers.{i}.self_attn.k_proj.weight"] = k
    return sd


@pytest.mark.parametrize("rotary_dim", [32, 24, 16])
def test_half_rotary_dim_comes_from_the_pairing(rotary_dim):
    res = rk.infer_layout(_weights("half", rotary_dim), _config())
    assert (res.layout, res.rotary_dim, res.rotary_dim_source) == ("half", rotary_dim, "weights"), res.summary()
    assert bool(res.contradiction) == (rotary_dim != D)


def test_interleaved_rotary_dim_is_a_lower_bound_checked_against_the_config():
    sd = _weights("interleaved", 16)
    res = rk.infer_layout(sd, _config(partial_rotary_factor=0.5))
    assert (res.layout, res.rotary_dim, res.rotary_dim_source) == ("interleaved", 16, "config"), res.summary()
    lo, hi = res.rotary_dim_range
    assert lo <= 16 and hi == D and not res.contradiction
    # a config that rotates fewer dims than the weights pair up is contradicted
    res = rk.infer_layout(sd, _config(partial_rotary_factor=0.25))
    assert res.rotary_dim is None and "rotary_dim=8" in res.contradiction, res.summary()


def test_no_pair_structure_is_unknown_and_names_no_rotary_dim():
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(v.shape, generator=g) for k, v in _weights("half", D).items()}
    res = rk.infer_layout(sd, _config())
    assert (res.layout, res.rotary_dim, res.rotary_dim_range) == ("unknown", None, None), res.summary()
    assert res.to_dict()["layout"] == "unknown"


def test_a_config_with_a_rope_per_layer_type_is_read_with_its_first_type():
    config = _config(model_type="gemma3_text", num_hidden_layers=4) | {
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }
    }
    config.pop("rope_theta")
    res = rk.infer_layout(_weights("half", 24), config)
    assert (res.layout, res.rotary_dim, res.geometry.base) == ("half", 24, 1e6), res.summary()
