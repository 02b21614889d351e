"""``doctor MODEL_DIR`` on Meta and LitGPT directories: the q/k reading from the weights, and for LitGPT
LitGPT's own RoPE (its rope cache builder and apply function, run here) against ropekit's reading.

Checkpoints are written with torch.save (never with ropekit); their q/k rows carry a known pair
structure (tests/pair_weights.py)."""

import importlib.util
import json

import pytest
import torch

import ropekit as rk
from ropekit.doctor.checkpoint_report import CheckpointReport, Reading, compare_readings, doctor_checkpoint

from pair_weights import pair_structured_qk

H, D, HIDDEN, LAYERS = 4, 32, 64, 3


def _meta_dir(tmp_path, layout):
    sd = {}
    for i in range(LAYERS):
        q, k = pair_structured_qk(layout, D, H, D, HIDDEN, seed=i)
        sd[f"layers.{i}.attention.wq.weight"], sd[f"layers.{i}.attention.wk.weight"] = q, k
        sd[f"layers.{i}.attention.wv.weight"] = torch.randn(H * D, HIDDEN)
    torch.save(sd, tmp_path / "consolidated.00.pth")
    params = {
        "dim": HIDDEN * 2,
        "n_layers": LAYERS,
        "n_heads": H,
        "vocab_size": 32,
        "rope_theta": 10000.0,
        "norm_eps": 1e-5,
    }
    (tmp_path / "params.json").write_text(json.dumps(params))
    return tmp_path


def test_a_meta_directory_gets_the_q_k_reading(tmp_path):
    # Meta stores interleaved rows and rotates them interleaved: nothing to fix
    rep = doctor_checkpoint(_meta_dir(tmp_path, "interleaved"))
    assert rep.layout is not None and rep.layout.layout == "interleaved", rep.layout
    assert [f.kind for f in rep.problems] == [], [f.text for f in rep.problems]


def test_half_rows_in_a_meta_directory_are_a_problem_with_the_permutation(tmp_path):
    rep = doctor_checkpoint(_meta_dir(tmp_path, "half"))
    assert rep.layout.layout == "half"
    [problem] = rep.problems
    assert problem.kind == "layout" and "src='half', dst='interleaved'" in problem.fix


# ---------------------------------------------------------------------------------------------
# LitGPT: lit_model.pth (fused attn.qkv, [q; k; v]) and model_config.yaml
# ---------------------------------------------------------------------------------------------

LIT_YAML = """name: tiny-lit
block_size: 4096
n_layer: 3
n_embd: 128
n_head: 4
n_query_groups: 4
head_size: 32
rotary_percentage: 1.0
rope_base: 10000
padded_vocab_size: 128
vocab_size: 128
bias: false
norm_class_name: RMSNorm
mlp_class_name: LLaMAMLP
intermediate_size: 256
"""
YARN = """rope_adjustments:
  factor: 4.0
  beta_fast: 32.0
  beta_slow: 1.0
  original_max_seq_len: 1024
"""


def _litgpt():
    """litgpt's model module, or a skip naming why (litgpt imports lightning)."""
    if importlib.util.find_spec("litgpt") is None:
        pytest.skip("litgpt is not installed (scripts/setup.sh installs it with the lightning parts it imports)")
    try:
        import litgpt.model
    except ImportError as exc:
        pytest.skip(f"litgpt cannot be imported here: {exc}")
    return litgpt.model


def _lit_dir(tmp_path, extra=""):
    sd = {}
    for i in range(LAYERS):
        q, k = pair_structured_qk("half", D, H, D, 128, seed=i)
        sd[f"transformer.h.{i}.attn.qkv.weight"] = torch.cat((q, k, torch.randn(H * D, 128)))
    torch.save(sd, tmp_path / "lit_model.pth")
    (tmp_path / "model_config.yaml").write_text(LIT_YAML + extra)
    return tmp_path


def test_a_litgpt_directory_gets_litgpt_s_own_rope_and_the_q_k_reading(tmp_path):
    _litgpt()
    rep = doctor_checkpoint(_lit_dir(tmp_path))
    frameworks = [r.framework for r in rep.readings]
    assert frameworks[0] == "ropekit" and frameworks[1].startswith("litgpt 0.5"), frameworks
    # transformers cannot load it (no config.json): said, not left out
    assert frameworks[2] == "transformers" and rep.readings[2].spec is None and "config.json" in rep.readings[2].text
    lit = rep.readings[1]
    assert lit.spec is not None and (lit.spec.layout, lit.spec.rotary_dim, lit.spec.base) == ("half", 32, 10000.0)
    assert rep.layout.layout == "half" and rep.layout.rotary_dim == 32  # the fused qkv, split [q; k; v]
    assert rep.problems == [], [f.text for f in rep.problems]


def test_litgpt_s_yarn_is_what_ropekit_reads_and_not_transformers_yarn(tmp_path):
    """ropekit's LitGPT reading describes LitGPT's mirrored ramp: the same RoPE as LitGPT's own code
    (their float32 tables may differ: a "precision" note, no problem); transformers' yarn on the same
    keys (a deliberately wrong reading) is a disagreement."""
    _litgpt()
    from ropekit import RopeSpec
    from ropekit.doctor.framework_readings import litgpt_rope_fn
    from ropekit.scaling import Yarn

    path = _lit_dir(tmp_path, YARN)
    rep = doctor_checkpoint(path, weights=False)
    assert rep.problems == [], [f.text for f in rep.problems]
    fn, head_dim, version = litgpt_rope_fn(path)
    lit = Reading(f"litgpt {version}", rep.readings[1].spec, "")
    wrong = Reading(
        "transformers-style yarn",
        RopeSpec(
            head_dim=32,
            base=10000.0,
            scaling=Yarn(factor=4.0, beta_fast=32.0, beta_slow=1.0, original_max_position_embeddings=1024),
        ),
        "",
    )
    out = CheckpointReport("x")
    compare_readings(out, wrong, lit, fn, 2**16)
    [finding] = out.findings
    assert finding.kind == "disagreement" and finding.problem and "scaling" in finding.text


def test_compare_calls_litgpt_s_float32_yarn_the_same_rope_in_other_arithmetic(tmp_path):
    """LitGPT's yarn tables (float32) against ropekit's reading of the same keys: the two fits differ
    in the 8th digit of their scaling, which is no config change; compare says precision only,
    with no fitted divisors to set.  The transformers-style yarn still differs in scaling."""
    _litgpt()
    from ropekit import RopeSpec, compare
    from ropekit.doctor.framework_readings import litgpt_rope_fn
    from ropekit.doctor.verification import spec_rope_fn
    from ropekit.scaling import Yarn

    path = _lit_dir(tmp_path, YARN)
    spec = doctor_checkpoint(path, weights=False).readings[1].spec
    fn, head_dim, _ = litgpt_rope_fn(path)
    rep = compare(fn, spec_rope_fn(spec, precision="hf"), head_dim, max_position=2**16, names=("litgpt", "ropekit"))
    assert not rep.equivalent and rep.precision_only, rep.explanation
    assert "same RoPE" in rep.explanation and "rope_scaling" not in rep.fix
    yarn = Yarn(factor=4.0, beta_fast=32.0, beta_slow=1.0, original_max_position_embeddings=1024)
    wrong = spec_rope_fn(RopeSpec(head_dim=32, scaling=yarn), precision="hf")
    other = compare(fn, wrong, head_dim, max_position=2**16, names=("litgpt", "transformers-style"))
    assert "scaling" in [d.field for d in other.differences]


def test_litgpt_s_qkv_split_is_litgpt_s_own(tmp_path):
    """The [q; k; v] order against the q/k LitGPT's CausalSelfAttention hands to apply_rope (GQA)."""
    model = _litgpt()
    from litgpt.config import Config

    from ropekit.doctor.fused_qkv import split_qk
    from ropekit.doctor.weights import geometry_of

    (tmp_path / "model_config.yaml").write_text(LIT_YAML.replace("n_query_groups: 4", "n_query_groups: 2"))
    cfg = Config.from_file(tmp_path / "model_config.yaml")
    attn = model.CausalSelfAttention(cfg, block_idx=0)
    seen = {}
    original = model.apply_rope

    def spy(x, cos, sin):
        seen.setdefault("q" if "q" not in seen else "k", x.detach().clone())
        return original(x, cos, sin)

    x = torch.randn(1, 5, 128)
    cos, sin = model.build_rope_cache(5, 32)
    model.apply_rope = spy
    try:
        with torch.no_grad():
            attn(x, cos[None], sin[None])
    finally:
        model.apply_rope = original
    g = geometry_of({}, tmp_path)
    wq, wk = split_qk(attn.qkv.weight.detach(), "concat", g)
    assert torch.allclose((x @ wq.T).view(1, 5, 4, 32).transpose(1, 2), seen["q"], atol=1e-6)
    assert torch.allclose((x @ wk.T).view(1, 5, 2, 32).transpose(1, 2), seen["k"], atol=1e-6)
    wq, wk = split_qk(attn.qkv.weight.detach(), "grouped", g)  # the other order: not LitGPT's
    assert not torch.allclose((x @ wk.T).view(1, 5, 2, 32).transpose(1, 2), seen["k"], atol=1e-6)


def test_the_cli_reads_a_meta_directory_and_two_of_them(tmp_path, capsys):
    from ropekit.cli import main

    (tmp_path / "half").mkdir()
    half = _meta_dir(tmp_path / "half", "half")
    assert main(["doctor", str(half)]) == 1
    out = capsys.readouterr().out
    assert "! layout: the trained q/k weights: half" in out and "src='half', dst='interleaved'" in out
    assert main(["doctor", str(half), "--json"]) == 1
    layout = json.loads(capsys.readouterr().out)["layout"]
    assert (layout["layout"], layout["rotary_dim"], layout["rotary_dim_source"]) == ("half", 32, "weights")
    # B = A with every q/k tensor permuted half -> interleaved: the permutation is found in every layer
    (tmp_path / "inter").mkdir()
    sd = torch.load(half / "consolidated.00.pth")
    sd = {
        k: rk.permute_qk(v, n_heads=H, head_dim=D, src="half", dst="interleaved") if ".wq." in k or ".wk." in k else v
        for k, v in sd.items()
    }
    torch.save(sd, tmp_path / "inter" / "consolidated.00.pth")
    (tmp_path / "inter" / "params.json").write_text((half / "params.json").read_text())
    assert main(["doctor", str(half), str(tmp_path / "inter")]) == 0
    out = capsys.readouterr().out
    assert "permute_qk(w, n_heads=..., head_dim=32, rotary_dim=32, src='half', dst='interleaved')" in out


def test_a_config_with_a_rope_per_layer_type_gets_a_reading_per_type(tmp_path):
    """Gemma 3: full-attention and sliding layers rotate with different RoPEs; each is read by ropekit
    and measured through transformers' Gemma3RotaryEmbedding for that layer type, and they agree;
    one type's transformers RoPE against the other type's reading (a deliberately wrong pairing) is a
    disagreement."""
    pytest.importorskip("transformers")
    config = {
        "model_type": "gemma3_text",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "head_dim": 16,
        "num_hidden_layers": 6,
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    rep = doctor_checkpoint(tmp_path)
    by_name = {r.framework.split(" ")[0] + " " + r.framework.split(" ")[-1]: r for r in rep.readings}
    for layer_type in ("full_attention", "sliding_attention"):
        ours, theirs = by_name[f"ropekit [{layer_type}]"], by_name[f"transformers [{layer_type}]"]
        assert theirs.spec is not None and theirs.spec.base == ours.spec.base, theirs.text
    assert rep.problems == [], [f.text for f in rep.problems]
    from ropekit.doctor.installed_transformers import transformers_rope_fn

    fn, _, _ = transformers_rope_fn(config, layer_type="full_attention")
    out = CheckpointReport("x")
    compare_readings(out, by_name["ropekit [sliding_attention]"], by_name["transformers [full_attention]"], fn, 2**16)
    assert [f.kind for f in out.findings] == ["disagreement"]
