"""infer_layout on weights built with a known pair structure (the SmolLM2 tests use a real model).

For a true rotation pair (a, b) the key rows are the query rows turned by 90 degrees
(``k_a = q_b``, ``k_b = -q_a``): the q/k coupling of the pair is a pure rotation generator, the
structure trained RoPE weights have.  Every other key row is independent noise."""

import pytest
import torch

import ropekit as rk
from ropekit.layouts import pair_dims

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
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(layers):
        q = torch.randn(H, D, HIDDEN, generator=g)
        k = torch.randn(H, D, HIDDEN, generator=g)
        for a, b in pair_dims(layout, rotary_dim):
            k[:, a], k[:, b] = q[:, b], -q[:, a]
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = q.reshape(H * D, HIDDEN)
        sd[f"model.layers.{i}.self_attn.k_proj.weight"] = k.reshape(H * D, HIDDEN)
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
