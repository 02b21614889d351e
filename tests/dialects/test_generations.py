"""Configs both transformers generations read: ``ropekit spec CONFIG --to v4|v5|both -o FILE``.

The end-to-end test loads a 5.x config rewritten ``--to both`` in transformers 4.38.1 (a
subprocess with that release on PYTHONPATH) and in the installed 5.x, and compares the base,
the scaling and the logits of the same tiny model.  Without the rewrite, 4.38.1 runs a
different RoPE (the control).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import ropekit as rk
from releases import release_dir
from ropekit.cli import main
from ropekit.dialects.generations import releases_that_differ, with_generation_keys

transformers = pytest.importorskip("transformers")
SRC = Path(__file__).resolve().parents[2] / "src"

TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 97,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
V5 = {**TINY, "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0}}


def test_both_keeps_the_meaning_for_every_generation():
    both = with_generation_keys(V5, "both")
    assert both["rope_theta"] == 500000.0 and both["rope_scaling"] == {"type": "linear", "factor": 4.0}
    assert both["rope_parameters"] == V5["rope_parameters"]
    assert with_generation_keys(V5, "v5") == V5
    v4 = with_generation_keys(V5, "v4")
    assert "rope_parameters" not in v4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "ignored keys" warning for any release
        for release in ("4.37.2", "4.38.1", "4.45.2", "4.57.6", "5.24.0"):
            spec = rk.from_config(both, transformers_version=release)
            assert spec.base == 500000.0 and spec.scaling.factor == 4.0, release
    assert releases_that_differ(both) == []
    assert len(releases_that_differ(V5)) == 4  # every 4.x runs base 10000, no scaling


def test_cli_rewrites_atomically_and_never_the_input(tmp_path, capsys):
    src = tmp_path / "config.json"
    src.write_text(json.dumps(V5))
    before = src.read_bytes()
    out = tmp_path / "both.json"
    assert main(["spec", str(src), "--to", "both", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == with_generation_keys(V5, "both")
    assert src.read_bytes() == before
    assert main(["spec", str(src), "--to", "both", "-o", str(src)]) == 2  # the input: refused
    assert main(["spec", str(tmp_path), "--to", "v4", "-o", str(src)]) == 2  # the dir's config.json
    assert main(["spec", str(src), "--to", "v4"]) == 2  # no -o
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.json", "config.json"]  # no temp left
    capsys.readouterr()


def test_spec_warns_with_the_base_the_release_uses(tmp_path, capsys):
    src = tmp_path / "config.json"
    src.write_text(json.dumps(V5))
    assert main(["spec", str(src), "--transformers-version", "4.38.1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["base"] == 10000.0
    assert "ignores rope_parameters" in captured.err and "base=10000" in captured.err


def test_converted_checkpoint_marker_sets_the_layout():
    marked = {**TINY, "rope_theta": 10000.0, "ropekit_layout": "interleaved"}
    assert rk.from_config(marked).layout == "interleaved"
    assert rk.from_config(marked, layout="half").layout == "half"  # the caller still overrides
    with pytest.raises(rk.RopeConfigError, match="ropekit_layout"):
        rk.from_config({**marked, "ropekit_layout": 3})


_OLD_SIDE = textwrap.dedent(
    """
    import json, sys, torch, transformers
    from safetensors.torch import load_file
    cfg = transformers.LlamaConfig.from_dict(json.load(open(sys.argv[1])))
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.load_state_dict(load_file(sys.argv[2]), strict=True)
    ids = torch.tensor([list(range(0, 97, 3)) * 4])
    with torch.no_grad():
        logits = model(ids).logits
    torch.save(logits, sys.argv[3])
    print(json.dumps({"version": transformers.__version__, "rope_theta": cfg.rope_theta,
                      "rope_scaling": cfg.rope_scaling}))
    """
)


def _old_logits(config_path, weights, out):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(release_dir("4.38.1")), str(SRC)])}
    run = subprocess.run(
        [sys.executable, "-c", _OLD_SIDE, str(config_path), str(weights), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), torch.load(out)


def test_rewritten_config_gives_438_and_5x_the_same_logits(tmp_path):
    release_dir("4.38.1")
    from safetensors.torch import save_file

    both = with_generation_keys(V5, "both")
    (tmp_path / "both.json").write_text(json.dumps(both))
    (tmp_path / "v5.json").write_text(json.dumps(V5))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig.from_dict(json.loads((tmp_path / "both.json").read_text()))
    model = transformers.LlamaForCausalLM(cfg).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    ids = torch.tensor([list(range(0, 97, 3)) * 4])
    with torch.no_grad():
        new = model(ids).logits

    info, old = _old_logits(tmp_path / "both.json", tmp_path / "w.safetensors", tmp_path / "old.pt")
    assert info["version"] == "4.38.1"
    assert info["rope_theta"] == 500000.0 and info["rope_scaling"] == {"type": "linear", "factor": 4.0}
    assert cfg.rope_parameters["rope_theta"] == 500000.0 and cfg.rope_parameters["factor"] == 4.0
    scale = new.abs().max().item()
    # the same RoPE; only float32 rounding differs (4.38 divides positions, 5.x frequencies)
    assert (old - new).abs().max().item() <= 1e-5 * scale

    # control: the 5.x-only config runs another RoPE under 4.38.1 (base 10000, no scaling)
    info, control = _old_logits(tmp_path / "v5.json", tmp_path / "w.safetensors", tmp_path / "control.pt")
    assert info["rope_theta"] == 10000.0 and info["rope_scaling"] is None
    assert (control - new).abs().max().item() > 100 * 1e-5 * scale


def test_convert_to_hf_writes_keys_both_generations_read():
    from ropekit.conversion.formats.base import Geometry
    from ropekit.conversion.formats.meta_dir import hf_config_from_meta

    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "rope_theta": 500000.0, "use_scaled_rope": True}
    shapes = {"layers.0.feed_forward.w1.weight": (96, 64), "tok_embeddings.weight": (97, 64)}
    cfg = hf_config_from_meta(params, Geometry(4, 2, 16, 16, 2), shapes, torch.float32)
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 500000.0
    assert cfg["rope_scaling"]["rope_type"] == cfg["rope_parameters"]["rope_type"] == "llama3"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        specs = {r: rk.from_config(cfg, transformers_version=r) for r in ("4.45.2", "4.57.6", "5.24.0")}
    assert len(set(specs.values())) == 1
