"""Fused q/k/v projections split by their family's row order, against the q/k that family's own
modeling code in transformers computes (tiny models built from configs, layer 0 observed)."""

import contextlib
import importlib

import pytest
import torch

import ropekit as rk
from ropekit.errors import RopeCheckpointError

transformers = pytest.importorskip("transformers")

from ropekit.doctor.fused_qkv import split_qk  # noqa: E402
from ropekit.doctor.weights import geometry_of, qk_layers  # noqa: E402

BASE = {
    "hidden_size": 64,
    "num_attention_heads": 8,
    "num_hidden_layers": 1,
    "vocab_size": 128,
    "intermediate_size": 96,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 1,
}
CASES = {
    "phi3": ("phi3", {"num_key_value_heads": 2}, "model.layers.0.self_attn.qkv_proj"),
    "gpt_neox": ("gpt_neox", {"rotary_pct": 0.5}, "gpt_neox.layers.0.attention.query_key_value"),
    "persimmon": ("persimmon", {"qk_layernorm": False}, "model.layers.0.self_attn.query_key_value"),
    "falcon_new": (
        "falcon",
        {"new_decoder_architecture": True, "num_kv_heads": 2, "alibi": False},
        "transformer.h.0.self_attention.query_key_value",
    ),
    "falcon_mq": (
        "falcon",
        {"new_decoder_architecture": False, "multi_query": True, "alibi": False},
        "transformer.h.0.self_attention.query_key_value",
    ),
    "falcon_mha": (
        "falcon",
        {"new_decoder_architecture": False, "multi_query": False, "alibi": False},
        "transformer.h.0.self_attention.query_key_value",
    ),
}


@contextlib.contextmanager
def _observed(model_type, fused):
    """The input of the fused projection and the (q, k) the family hands to its apply function."""
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    seen = {}
    original = module.apply_rotary_pos_emb

    def spy(q, k, *args, **kwargs):
        seen.setdefault("qk", (q.detach().clone(), k.detach().clone()))
        return original(q, k, *args, **kwargs)

    def record_input(module, inputs, output):  # returns None: the output stays the module's own
        seen.setdefault("x", inputs[0].detach().clone())

    handle = fused.register_forward_hook(record_input)
    module.apply_rotary_pos_emb = spy
    try:
        yield seen
    finally:
        module.apply_rotary_pos_emb = original
        handle.remove()


def _family_run(case):
    model_type, extra, fused_name = CASES[case]
    config = {"model_type": model_type} | BASE | extra
    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    fused = model.get_submodule(fused_name)
    if fused.bias is not None:
        torch.nn.init.zeros_(fused.bias)  # the q/k rows of the weight are under test
    with _observed(model_type, fused) as seen, torch.no_grad():
        model(input_ids=torch.randint(0, 128, (1, 5)))
    return config, model.state_dict(), seen


def _project(x, w, heads, head_dim):
    b, s, _ = x.shape
    return (x @ w.T).view(b, s, heads, head_dim).transpose(1, 2)


def _matches(seen, wq, wk, g):
    q, k = seen["qk"]
    pq = _project(seen["x"], wq, g.n_heads, g.head_dim)[..., : q.shape[-1]]
    pk = _project(seen["x"], wk, g.n_kv_heads, g.head_dim)[..., : k.shape[-1]]
    if k.shape[1] != pk.shape[1]:  # falcon's new architecture hands every query head its group's key
        pk = pk.repeat_interleave(k.shape[1] // pk.shape[1], 1)
    return torch.allclose(pq, q, atol=1e-5) and torch.allclose(pk, k, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_gives_the_q_and_k_the_family_computes(case):
    config, sd, seen = _family_run(case)
    g = geometry_of(sd, config)
    [(layer, wq, wk)] = list(qk_layers(sd, [0], g))
    assert layer == 0 and _matches(seen, wq, wk, g)
    # the other order (a deliberately wrong split) does not give the family's q/k
    wrong = "grouped" if case == "phi3" else "concat"
    fused = sd[CASES[case][2] + ".weight"]
    if case != "falcon_mq":  # multi-query: one group, so the two orders coincide
        assert not _matches(seen, *split_qk(fused, wrong, g), g)


def test_a_fused_projection_of_unknown_order_is_refused_by_name():
    config = {"model_type": "codegen", "n_embd": 64, "n_head": 8, "rotary_dim": 4, "n_positions": 256}
    sd = {"transformer.h.0.attn.qkv_proj.weight": torch.zeros(192, 64)}
    with pytest.raises(RopeCheckpointError, match=r"transformer\.h\.0\.attn\.qkv_proj\.weight.*codegen"):
        list(qk_layers(sd, geometry=geometry_of(sd, config)))


def test_infer_layout_reads_a_fused_checkpoint():
    """gpt_neox order written by hand (per head [q_h, k_h, v_h]) around pair-structured q/k."""
    from pair_weights import pair_structured_qk

    fused = {}
    for i in range(3):  # 8 heads of 32 dims, half layout, rotary_dim 16
        q, k = (w.view(8, 32, -1) for w in pair_structured_qk("half", 16, 8, 32, 48, seed=i))
        fused[f"gpt_neox.layers.{i}.attention.query_key_value.weight"] = torch.stack(
            (q, k, torch.randn_like(q)), 1
        ).reshape(3 * 256, -1)
    config = {
        "model_type": "gpt_neox",
        "hidden_size": 256,
        "num_attention_heads": 8,
        "rotary_pct": 0.5,
        "max_position_embeddings": 8192,
        "rotary_emb_base": 10000,
    }
    res = rk.infer_layout(fused, config)
    assert (res.layout, res.rotary_dim, res.contradiction) == ("half", 16, ""), res.summary()


def test_doctor_a_b_finds_a_permutation_inside_fused_projections():
    """phi3 [q; k; v] checkpoints: B's q and k rows inside the fused tensor permuted half ->
    interleaved (v untouched) are found per layer; B with one k row scaled is named as the first
    difference."""
    from ropekit.doctor.checkpoint_diff import diff_checkpoints

    config = {"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2}
    H, KV, D = 8, 2, 8
    g = torch.Generator().manual_seed(0)
    a = {
        f"model.layers.{i}.self_attn.qkv_proj.weight": torch.randn((H + 2 * KV) * D, 64, generator=g) for i in range(2)
    }

    def permuted(w):
        q, k, v = w[: H * D], w[H * D : (H + KV) * D], w[(H + KV) * D :]
        p = lambda t, n: rk.permute_qk(t, n_heads=n, head_dim=D, src="half", dst="interleaved")  # noqa: E731
        return torch.cat((p(q, H), p(k, KV), v))

    b = {k: permuted(w) for k, w in a.items()}
    geometry = geometry_of(a, config)
    diff = diff_checkpoints(a, b, geometry)
    assert diff.same_up_to_permutation and len(diff.tensors) == 4
    assert diff.permutation == "permute_qk(w, n_heads=..., head_dim=8, rotary_dim=8, src='half', dst='interleaved')"
    changed = dict(b)
    w = changed["model.layers.1.self_attn.qkv_proj.weight"].clone()
    w[H * D + 3] *= 1.01  # one k row of layer 1
    changed["model.layers.1.self_attn.qkv_proj.weight"] = w
    first = diff_checkpoints(a, changed, geometry).first_difference
    assert (first.layer, first.role) == (1, "k")
