"""from_config: every accepted form, every dialect, and a clear error (key + value) for every
malformed config.  Parity of the numbers with transformers' modules lives in test_dialects_hf_parity.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ropekit as rk
from ropekit.dialects import dialect_of, layer_types_of, load
from ropekit.dialects.catalog import CATALOG, catalog_specs
from ropekit.dialects.spec_table import spec_table
from ropekit.spec import Linear, Llama3, Yarn

LLAMA = {
    "model_type": "llama",
    "hidden_size": 256,
    "num_attention_heads": 4,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
}


def _with(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    out.update(changes)
    return out


def _config_error(config, *fragments, **kwargs):
    with pytest.raises(rk.RopeConfigError) as info:
        rk.from_config(config, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message  # one line
    return message


MALFORMED = [
    ("rope_theta-str", _with(LLAMA, rope_theta="1e4"), {}, ["rope_theta='1e4'"]),
    ("rope_theta-negative", _with(LLAMA, rope_theta=-5.0), {}, ["base=-5.0"]),
    ("rope_theta-nan", _with(LLAMA, rope_theta=float("nan")), {}, ["rope_theta=nan"]),
    ("rope_scaling-not-dict", _with(LLAMA, rope_scaling="linear"), {}, ["rope_scaling='linear'"]),
    ("rope_type-unknown", _with(LLAMA, rope_scaling={"rope_type": "ntk", "factor": 2.0}), {}, ["rope_type='ntk'"]),
    ("rope_type-not-str", _with(LLAMA, rope_scaling={"rope_type": 3, "factor": 2.0}), {}, ["rope_type=3"]),
    ("factor-missing", _with(LLAMA, rope_scaling={"type": "linear"}), {}, ["rope_scaling.factor", "missing"]),
    ("factor-str", _with(LLAMA, rope_scaling={"type": "linear", "factor": "4"}), {}, ["rope_scaling.factor='4'"]),
    ("factor<1", _with(LLAMA, rope_scaling={"type": "dynamic", "factor": 0.5}), {}, ["scaling.factor=0.5"]),
    (
        "llama3-missing-key",
        _with(LLAMA, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}),
        {},
        ["high_freq_factor", "missing"],
    ),
    (
        "longrope-length",
        _with(LLAMA, rope_scaling={"type": "longrope", "short_factor": [1.0] * 5, "long_factor": [1.0] * 32}),
        {},
        ["rope_scaling.short_factor has 5 entries", "needs 32"],
    ),
    (
        "longrope-entry",
        _with(LLAMA, rope_scaling={"type": "longrope", "short_factor": [1.0] * 31 + ["x"], "long_factor": [1.0] * 32}),
        {},
        ["rope_scaling.short_factor[31]='x'"],
    ),
    (
        "yarn-original-str",
        _with(LLAMA, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": "4k"}),
        {},
        ["original_max_position_embeddings='4k'"],
    ),
    (
        "yarn-truncate",
        _with(LLAMA, rope_scaling={"type": "yarn", "factor": 4.0, "truncate": "no"}),
        {},
        ["truncate='no'"],
    ),
    ("heads-not-dividing", _with(LLAMA, num_attention_heads=3), {}, ["hidden_size=256", "num_attention_heads=3"]),
    ("heads-zero", _with(LLAMA, num_attention_heads=0), {}, ["num_attention_heads=0"]),
    ("head_dim-float", _with(LLAMA, head_dim=12.5), {}, ["head_dim=12.5"]),
    ("partial>1", _with(LLAMA, partial_rotary_factor=1.5), {}, ["partial_rotary_factor=1.5"]),
    ("partial-odd", _with(LLAMA, partial_rotary_factor=0.3), {}, ["rotary_dim=19", "even"]),
    (
        "rotary_pct-zero",
        {"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4, "rotary_pct": 0},
        {},
        ["rotary_pct=0.0"],
    ),
    ("gptj-rotary_dim-odd", {"model_type": "gptj", "n_embd": 64, "n_head": 4, "rotary_dim": 7}, {}, ["rotary_dim=7"]),
    (
        "unknown-family",
        {"model_type": "mystery", "hidden_size": 64, "num_attention_heads": 4},
        {},
        ["model_type='mystery'", "layout='half'", "layout='interleaved'"],
    ),
    ("no-family", {"hidden_size": 64, "num_attention_heads": 4}, {}, ["layout="]),
    ("bad-layout", LLAMA, {"layout": "sideways"}, ["layout='sideways'"]),
    ("nested-needs-layer_type", {"model_type": "gemma3_text", "head_dim": 32, "rope_theta": 1e6}, {}, ["layer_type"]),
    (
        "unknown-layer_type",
        {"model_type": "gemma3_text", "head_dim": 32},
        {"layer_type": "chunked"},
        ["layer_type='chunked'", "full_attention"],
    ),
    ("layer_type-on-flat", LLAMA, {"layer_type": "full_attention"}, ["layer_type='full_attention'"]),
    (
        "null-layer",
        {
            "model_type": "llama",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "layer_types": ["full_attention", "linear_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "default"}, "linear_attention": None},
        },
        {"layer_type": "linear_attention"},
        ["linear_attention", "no RoPE"],
    ),
    ("meta-dim", {"dim": 100, "n_heads": 3}, {}, ["dim=100", "n_heads=3"]),
    ("meta-flag", {"dim": 128, "n_heads": 2, "use_scaled_rope": "yes"}, {}, ["use_scaled_rope='yes'"]),
    (
        "meta-theta",
        {
            "dim": 128,
            "n_heads": 2,
            "rope_theta": None,
            "n_layers": "x",
            "rope_scaling_factor": 0.5,
            "use_scaled_rope": True,
        },
        {},
        ["scaling.factor=0.5"],
    ),
    ("litgpt-odd", {"n_embd": 40, "n_head": 4, "rotary_percentage": 0.5}, {}, ["rope_n_elem=5"]),
    ("litgpt-percentage", {"n_embd": 64, "n_head": 4, "rotary_percentage": 2}, {}, ["rotary_percentage=2.0"]),
    (
        "litgpt-mixed",
        {"n_embd": 64, "n_head": 4, "rope_adjustments": {"factor": 2.0, "beta_fast": 32, "low_freq_factor": 1.0}},
        {},
        ["mixes"],
    ),
    ("litgpt-adjustments", {"n_embd": 64, "n_head": 4, "rope_adjustments": [1, 2]}, {}, ["rope_adjustments=[1, 2]"]),
    ("override-unknown", LLAMA, {"theta": 5.0}, ["theta"]),
    ("override-invalid", LLAMA, {"base": -1.0}, ["base=-1.0"]),
    ("unsupported-type", 42, {}, ["int"]),
]


@pytest.mark.parametrize("config, kwargs, fragments", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_configs_name_the_key_and_value(config, kwargs, fragments):
    _config_error(config, *fragments, **kwargs)


def test_unknown_family_with_layout_is_read_with_transformers_rules():
    spec = rk.from_config(
        {
            "model_type": "mystery",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "rope_theta": 5e5,
            "partial_rotary_factor": 0.5,
        },
        layout="interleaved",
    )
    assert (spec.layout, spec.head_dim, spec.rotary_dim, spec.base) == ("interleaved", 16, 8, 5e5)


# ---------------------------------------------------------------------------------------------
# accepted forms: dict, PretrainedConfig, config.json, params.json, model_config.yaml, directory
# ---------------------------------------------------------------------------------------------


def test_paths_files_and_directories(tmp_path):
    hf_dir, meta_dir, lit_dir = tmp_path / "hf", tmp_path / "meta", tmp_path / "lit"
    for d in (hf_dir, meta_dir, lit_dir):
        d.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(CATALOG["Llama-3.1-8B"]))
    (meta_dir / "params.json").write_text(json.dumps(CATALOG["Llama-3.1-8B (Meta params.json)"]))
    lit = CATALOG["Llama-3.1-8B (LitGPT)"]
    yaml = pytest.importorskip("yaml")
    (lit_dir / "model_config.yaml").write_text(yaml.safe_dump(lit))
    hf_spec = rk.from_config(hf_dir)
    assert rk.from_config(hf_dir / "config.json") == rk.from_config(str(hf_dir)) == hf_spec
    meta_spec = rk.from_config(meta_dir)
    lit_spec = rk.from_config(lit_dir)
    assert dialect_of(load(meta_dir)) == "meta" and dialect_of(load(lit_dir)) == "litgpt"
    # the three encodings of Llama 3.1 describe the same frequencies; only the layout differs
    assert meta_spec.replace(layout="half", max_position_embeddings=131072) == hf_spec
    assert lit_spec == hf_spec
    before = (hf_dir / "config.json").read_bytes()
    rk.from_config(hf_dir / "config.json")
    assert (hf_dir / "config.json").read_bytes() == before  # never modified


def test_bad_paths(tmp_path):
    _config_error(tmp_path / "missing.json", "does not exist")
    _config_error(tmp_path, "without config.json")
    (tmp_path / "config.json").write_text("{not json")
    _config_error(tmp_path / "config.json", "not valid JSON")
    (tmp_path / "list.json").write_text("[1, 2]")
    _config_error(tmp_path / "list.json", "JSON list")


def test_v5_nested_rope_parameters_by_layer_type():
    cfg = {
        "model_type": "gemma3_text",
        "head_dim": 32,
        "hidden_size": 64,
        "num_attention_heads": 2,
        "max_position_embeddings": 32768,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {
                "rope_type": "yarn",
                "rope_theta": 1e6,
                "factor": 8.0,
                "original_max_position_embeddings": 4096,
            },
        },
    }
    assert layer_types_of(cfg) == ["sliding_attention", "full_attention"]
    full = rk.from_config(cfg, layer_type="full_attention")
    sliding = rk.from_config(cfg, layer_type="sliding_attention")
    assert full.base == 1e6 and full.scaling == Yarn(8.0, 4096)
    assert sliding.base == 10000.0 and sliding.scaling is None


def test_v4_and_v5_forms_agree():
    v4 = _with(
        LLAMA, rope_theta=5e5, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    )
    v5 = _with(
        LLAMA,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 5e5,
            "factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
    )
    del v5["rope_theta"]
    assert rk.from_config(v4) == rk.from_config(v5)
    # rope_type wins over type; rope_theta inside the dict wins over the top level
    both = _with(LLAMA, rope_parameters={"type": "mrope", "rope_type": "linear", "factor": 2.0, "rope_theta": 7.0})
    assert rk.from_config(both).scaling == Linear(2.0) and rk.from_config(both).base == 7.0


def test_defaults_resolved_like_transformers():
    # yarn: factor is required (transformers raises KeyError without it); attention_factor into the spec
    no_factor = _with(
        LLAMA,
        max_position_embeddings=32768,
        rope_scaling={"rope_type": "yarn", "original_max_position_embeddings": 4096, "attention_factor": 1.5},
    )
    _config_error(no_factor, "rope_scaling.factor", "missing")
    no_factor["rope_scaling"]["factor"] = 8.0
    spec = rk.from_config(no_factor)
    assert spec.scaling.factor == 8.0 and spec.attention_factor == 1.5
    # Phi-3: the top-level original_max_position_embeddings wins over the one in rope_scaling
    phi3 = {
        "model_type": "phi3",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "max_position_embeddings": 8192,
        "original_max_position_embeddings": 2048,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": [1.0] * 8,
            "long_factor": [2.0] * 8,
            "original_max_position_embeddings": 4096,
        },
    }
    s = rk.from_config(phi3)
    assert s.scaling.original_max_position_embeddings == 2048 and s.scaling.factor == 4.0
    # dynamic grows from max_position_embeddings, as transformers does
    dyn = rk.from_config(_with(LLAMA, rope_scaling={"type": "dynamic", "factor": 2.0}))
    assert dyn.scaling.original_max_position_embeddings == 4096
    # family defaults: GPT-NeoX rotary_pct 0.25, Phi 0.5, GLM head_dim 128 and partial 0.5
    assert rk.from_config({"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 4}).rotary_dim == 32
    assert rk.from_config({"model_type": "phi", "hidden_size": 256, "num_attention_heads": 4}).rotary_dim == 32
    glm = rk.from_config({"model_type": "glm", "hidden_size": 4096, "num_attention_heads": 64})
    assert (glm.head_dim, glm.rotary_dim, glm.layout) == (128, 64, "interleaved")


def test_architectures_identify_the_family():
    cfg = {"architectures": ["CohereForCausalLM"], "hidden_size": 64, "num_attention_heads": 4}
    assert rk.from_config(cfg).layout == "interleaved"
    cfg = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4}
    assert rk.from_config(cfg).layout == "half"


def test_overrides_and_layout_override():
    spec = rk.from_config(LLAMA, base=5e5, layout="interleaved")
    assert spec.base == 5e5 and spec.layout == "interleaved"


def test_meta_params():
    spec = rk.from_config(
        {"dim": 2048, "n_heads": 32, "rope_theta": 500000.0, "use_scaled_rope": True, "rope_scaling_factor": 32.0}
    )
    assert spec.scaling == Llama3(32.0, 1.0, 4.0, 8192) and spec.layout == "interleaved" and spec.head_dim == 64
    assert rk.from_config({"dim": 4096, "n_heads": 32}).base == 10000.0  # Llama 1/2 wrote no rope_theta


def test_litgpt_keys():
    base = {"n_embd": 256, "n_head": 4, "rotary_percentage": 0.5, "rope_base": 20000, "block_size": 4096}
    spec = rk.from_config(base)
    assert (spec.layout, spec.rotary_dim, spec.base, spec.scaling) == ("half", 32, 20000.0, None)
    assert rk.from_config(_with(base, rope_interleave=True)).layout == "interleaved"
    assert rk.from_config(_with(base, rope_condense_ratio=4)).scaling == Linear(4.0)
    yarn = rk.from_config(
        _with(base, rope_adjustments={"factor": 8.0, "beta_fast": 32.0, "beta_slow": 1.0, "original_max_seq_len": 4096})
    )
    # LitGPT's yarn (its ramp mirrored against transformers'): one divisor per pair, as LitGPT computes
    assert yarn.scaling.kind == "longrope" and yarn.attention_factor == 1.0  # LitGPT: no mscale, no scaling
    assert (yarn.scaling.short_factor[0], yarn.scaling.short_factor[-1]) == (8.0, 1.0)
    gemma = _with(base, rope_local_base_freq=10000.0)
    assert layer_types_of(gemma) == ["full_attention", "sliding_attention"]
    assert rk.from_config(gemma, layer_type="sliding_attention").base == 10000.0


def test_litgpt_llama3_frequencies_equal_transformers_llama3():
    lit = rk.from_config(CATALOG["Llama-3.1-8B (LitGPT)"])
    hf = rk.from_config(CATALOG["Llama-3.1-8B"])
    assert torch.equal(rk.inv_freq(lit)[0], rk.inv_freq(hf)[0])


# ---------------------------------------------------------------------------------------------
# the catalog: every entry reads, and transformers reads the HF ones to the same spec
# ---------------------------------------------------------------------------------------------


def test_catalog_reads_and_table_lists_every_entry():
    rows = catalog_specs()
    names = {name for name, _, _ in rows}
    assert names == set(CATALOG)
    table = spec_table(rows)
    for name in CATALOG:
        assert name in table
    by_name = {(n, lt): s for n, lt, s in rows}
    assert by_name[("Phi-3.5-mini-instruct", None)].scaling.factor == 32.0
    assert by_name[("GPT-NeoX-20B", None)].rotary_dim == 24
    assert by_name[("Gemma-3-4B-it", "sliding_attention")].base == 10000.0
    assert by_name[("DeepSeek-V3", None)].head_dim == 64
    assert by_name[("GLM-4-9B-Chat", None)].base == 5e6


HF_CATALOG = [n for n, c in CATALOG.items() if "model_type" in c and c["model_type"] != "chatglm"]


@pytest.mark.parametrize("name", HF_CATALOG)
def test_transformers_reads_catalog_configs_to_the_same_spec(name):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cfg = json.loads(json.dumps(CATALOG[name]))
    obj = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    for layer_type in layer_types_of(CATALOG[name]) or [None]:
        assert rk.from_config(obj, layer_type=layer_type) == rk.from_config(CATALOG[name], layer_type=layer_type)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _cli(*args):
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "ropekit", "spec", *args], capture_output=True, text=True, env=env)


def test_cli_catalog_and_json(tmp_path):
    out = _cli("--catalog")
    assert out.returncode == 0 and "DeepSeek-V3" in out.stdout and "Phi-3.5-mini-instruct" in out.stdout
    (tmp_path / "config.json").write_text(json.dumps(CATALOG["Qwen2-VL-7B-Instruct"]))
    out = _cli(str(tmp_path), "--json")
    assert out.returncode == 0
    assert rk.RopeSpec.from_dict(json.loads(out.stdout)) == rk.from_config(tmp_path)
    out = _cli("Llama-3.1-8B", "--json")
    assert rk.RopeSpec.from_dict(json.loads(out.stdout)) == rk.from_config(CATALOG["Llama-3.1-8B"])


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "mystery", "hidden_size": 8, "num_attention_heads": 2})
    )
    out = _cli(str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "layout=" in out.stderr
    out = _cli(str(tmp_path), "--layout", "half")
    assert out.returncode == 0
    out = _cli("no-such-model")
    assert out.returncode == 2 and "catalog" in out.stderr


@pytest.mark.parametrize(
    "name",
    ["Llama-3.1-8B", "Gemma-3-4B-it", "Phi-3.5-mini-instruct", "DeepSeek-V3", "Qwen2-VL-7B-Instruct", "GPT-NeoX-20B"],
)
def test_config_json_written_by_transformers_5_reads_back(tmp_path, name):
    """transformers 5 writes v5 configs (rope_parameters, nested per layer type, text_config)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cfg = json.loads(json.dumps(CATALOG[name]))
    obj = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    obj.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in json.dumps(written)  # really the v5 form
    for layer_type in layer_types_of(CATALOG[name]) or [None]:
        assert rk.from_config(tmp_path, layer_type=layer_type) == rk.from_config(CATALOG[name], layer_type=layer_type)
