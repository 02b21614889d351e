"""`ropekit doctor`: the zoo table, A B comparisons (module:function, config file, model dir),
--json, and exit codes 0 (equivalent) / 1 (not) / 2 (bad input)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ropekit as rk
from releases import release_dir
from ropekit.cli import main

import tiny_models

# what each zoo entry is, written from the conventions (name: layout, rotary_dim, base, verdict)
ZOO_ROWS = {
    "hf_rotate_half": ("half", 128, "10000", "equivalent"),
    "meta_complex": ("interleaved", 128, "10000", "differs: layout"),
    "gptj": ("interleaved", 64, "10000", "differs: rotary_dim, layout"),
    "neox_partial": ("half", 24, "10000", "differs: rotary_dim"),
    "glm": ("interleaved", 64, "10000", "differs: rotary_dim, layout"),
    "minimind_complex": ("interleaved", 64, "10000", "differs: layout"),
    "minimind_rotate_half": ("half", 64, "1e+06", "differs: base"),
    "llama31_scaled": ("half", 128, "500000", "differs: base, scaling"),
    "halved_rotary_bug": ("half", 32, "10000", "differs: rotary_dim"),
    "offset_by_one": ("half", 128, "10000", "differs: offset"),
    "bf16_inv_freq": ("half", 128, "10000", "differs: precision (bug)"),
    "neox_bf16_inside": ("half", 64, "10000", "differs: rotary_dim, output_precision"),
    "fp16_inside": ("half", 128, "10000", "differs: output_precision"),
    "autocast_matmul": ("half", 64, "10000", "differs: output_precision"),
}

USER_MODULE = '''
import torch

def _inv(r, base=10000.0):
    return 1.0 / base ** (torch.arange(0, r, 2).double() / r)

def rotate_half(x, positions):
    """transformers' convention, written from the math in float64"""
    r = x.shape[-1]
    ang = positions.double()[:, None] * _inv(r)[None]
    c, s = ang.cos(), ang.sin()
    x1, x2 = x[:, : r // 2].double(), x[:, r // 2 :].double()
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), -1).to(x.dtype)

rotate_half.head_dim = 64

def interleaved(x, positions):
    r = x.shape[-1]
    ang = positions.double()[:, None] * _inv(r)[None]
    c, s = ang.cos(), ang.sin()
    x1, x2 = x[:, 0::2].double(), x[:, 1::2].double()
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(1).to(x.dtype)

NOT_CALLABLE = 3

def doubles(x, positions):
    return x * 2
'''


def run(capsys, *argv):
    rc = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A user's module next to where the command runs, and a Llama config.json (head_dim 64)."""
    name = f"userrope_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 512,
                "num_attention_heads": 8,
                "num_key_value_heads": 8,
                "rope_theta": 10000.0,
                "max_position_embeddings": 4096,
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name, model


def test_zoo_table_and_fixes(capsys):
    rc, out, _ = run(capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["name", "head", "layout", "rotary_dim", "base", "scaling"]
    assert lines[0].endswith("verdict vs transformers Llama")
    rows = {line.split()[0]: line for line in lines[2 : 2 + len(ZOO_ROWS)]}
    assert set(rows) == set(ZOO_ROWS) == set(rk.zoo.ZOO)
    for name, (layout, r, base, verdict) in ZOO_ROWS.items():
        cells = rows[name].split()
        assert (cells[2], cells[3], cells[4]) == (layout, str(r), base), rows[name]
        assert rows[name].rstrip().endswith(verdict), rows[name]
    fixes = [line for line in lines if line.startswith("* ")]
    # one fix per entry that differs from transformers, plus the Minimind pair, every one verified
    assert len(fixes) == len(ZOO_ROWS) and all("[verified]" in f for f in fixes)
    assert "permute_qk(w, n_heads=<n_heads>, head_dim=128, rotary_dim=128, src='interleaved', dst='half')" in out
    assert "offset_by_one is 1 position(s) ahead" in out
    assert "keep bf16_inv_freq's inv_freq in float32" in out


def test_zoo_json(capsys):
    rc, out, _ = run(capsys, "--json")
    assert rc == 0
    doc = json.loads(out)
    got = {
        e["name"]: (e["fingerprint"]["layout"], e["fingerprint"]["rotary_dim"], e["verdict"]) for e in doc["entries"]
    }
    assert got == {n: (lay, r, v) for n, (lay, r, _, v) in ZOO_ROWS.items()}
    assert all(e["comparison"]["fix_verified"] for e in doc["entries"] if not e["comparison"]["equivalent"])
    assert doc["pairs"][0]["a"] == "minimind_rotate_half" and doc["pairs"][0]["comparison"]["fix_verified"]


def test_function_vs_config_equivalent_exit_0(capsys, user_dir):
    mod, model = user_dir
    rc, out, _ = run(capsys, f"{mod}:rotate_half", str(model / "config.json"), "--precision", "exact")
    assert rc == 0, out
    assert "verdict: equivalent" in out and f"A = {mod}:rotate_half" in out
    # a model directory works as well as its config.json
    rc, out, _ = run(capsys, str(model), f"{mod}:rotate_half", "--precision", "exact")
    assert rc == 0 and "verdict: equivalent" in out


def test_function_vs_config_layout_bug_exit_1(capsys, user_dir):
    mod, model = user_dir
    rc, out, _ = run(capsys, str(model), f"{mod}:interleaved", "--head-dim", "64", "--n-heads", "8", "--show-mean")
    assert rc == 1
    assert "verdict: NOT equivalent" in out
    assert "layout: A half" in out and "B interleaved" in out
    assert "permute_qk(w, n_heads=8, head_dim=64, rotary_dim=64, src='interleaved', dst='half')" in out
    assert "fix verified: yes" in out
    assert "NOT evidence" in out


def test_json_comparison(capsys, user_dir):
    mod, model = user_dir
    rc, out, _ = run(capsys, "zoo:hf_rotate_half", "zoo:offset_by_one", "--json")
    assert rc == 1
    doc = json.loads(out)
    assert (doc["name_a"], doc["name_b"]) == ("zoo:hf_rotate_half", "zoo:offset_by_one")
    assert doc["equivalent"] is False and doc["a"]["offset"] == 0 and doc["b"]["offset"] == 1
    assert [d["field"] for d in doc["differences"]] == ["offset"] and doc["fix_verified"] is True
    assert doc["max_abs_err"] > 0.1 and "not evidence" in doc["mean_signed_err_note"]


def test_single_operand_fingerprints(capsys, user_dir):
    mod, _ = user_dir
    rc, out, _ = run(capsys, "zoo:glm")
    assert rc == 0 and "interleaved r=64/128 base=10000" in out
    rc, out, _ = run(capsys, f"{mod}:interleaved", "--head-dim", "64", "--json")
    assert rc == 0 and json.loads(out)["layout"] == "interleaved"
    rc, out, _ = run(capsys, f"{mod}:doubles", "--head-dim", "16")
    assert rc == 1 and "no RoPE explains fn" in out and "not passed through" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["zoo:nope"], "no zoo entry 'nope'"),
        (["no_such_module_xyz:fn"], "cannot import module 'no_such_module_xyz'"),
        (["{mod}:missing"], "has no attribute 'missing'"),
        (["{mod}:NOT_CALLABLE", "--head-dim", "64"], "not a function"),
        (["{mod}:interleaved"], "head_dim unknown (a function without a head_dim attribute); pass --head-dim"),
        (["{mod}:interleaved", "{mod}:doubles"], "head_dim unknown"),
        (["Llama-9.9-Nope"], "catalog name"),
        (["zoo:gptj", "zoo:hf_rotate_half"], "head_dim differs"),
        (["missing/config.json"], "neither package.module:function"),
        (["zoo:glm", "--max-position", "4"], "--max-position=4"),
    ],
)
def test_bad_input_exit_2(capsys, user_dir, argv, words):
    mod, _ = user_dir
    rc, out, err = run(capsys, *[a.format(mod=mod) for a in argv])
    assert rc == 2 and out == ""
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_option_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "zoo:glm", "--dtype", "int8"])
    assert exc.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, words",
    [("{not json", "is not valid JSON"), ('{"model_type": "llama", "hidden_size": "x"}', "hidden_size='x'")],
)
def test_bad_config_file_exit_2(capsys, tmp_path, text, words):
    bad = tmp_path / "config.json"
    bad.write_text(text)
    rc, _, err = run(capsys, str(bad), "zoo:hf_rotate_half")
    assert rc == 2 and err.startswith("ropekit: error:") and words in err
    assert bad.read_text() == text  # never modified


def test_entry_point_exit_codes():
    # the real command line, once: exit status 1 for a difference
    src = str(Path(rk.__file__).resolve().parents[1])  # this checkout's ropekit, not an installed one
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(
        [sys.executable, "-m", "ropekit", "doctor", "zoo:hf_rotate_half", "zoo:meta_complex"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 1, res.stderr
    assert "verdict: NOT equivalent" in res.stdout and "fix verified: yes" in res.stdout


def test_meta_params_vs_transformers_config(capsys, tmp_path):
    # the porting question itself: a Meta checkpoint's params.json against the transformers config
    meta, hf = tmp_path / "meta", tmp_path / "hf"
    meta.mkdir()
    hf.mkdir()
    (meta / "params.json").write_text(
        json.dumps(
            {
                "dim": 4096,
                "n_layers": 32,
                "n_heads": 32,
                "n_kv_heads": 8,
                "vocab_size": 128256,
                "multiple_of": 1024,
                "ffn_dim_multiplier": 1.3,
                "norm_eps": 1e-05,
                "rope_theta": 500000.0,
                "use_scaled_rope": True,
            }
        )
    )
    (hf / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 4096,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "rope_theta": 500000.0,
                "max_position_embeddings": 131072,
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
            }
        )
    )
    rc, out, _ = run(capsys, str(hf), str(meta / "params.json"))  # n_heads read from params.json
    assert rc == 1
    assert "why: layout: A half (pairs (i, i + r/2)), B interleaved (pairs (2i, 2i+1))" in out
    assert "permute_qk(w, n_heads=32, head_dim=128, rotary_dim=128, src='interleaved', dst='half')" in out
    assert "fix verified: yes" in out


def test_zoo_report_ends_with_the_next_step(capsys):
    rc, out, _ = run(capsys)
    assert rc == 0 and out.rstrip().splitlines()[-1].startswith("point it at your model: ropekit doctor path/to/model")


def test_catalog_names_are_configs(capsys):
    # the names `ropekit spec` and `ropekit plot` accept
    rc, out, _ = run(capsys, "Llama-3.1-8B")
    assert rc == 0 and "llama3" in out and "base=500000" in out
    rc, out, _ = run(capsys, "Llama-3.1-8B", "zoo:llama31_scaled")
    assert "A = Llama-3.1-8B" in out and "verdict:" in out


def test_head_dim_comes_from_the_config_operand(capsys, user_dir):
    # the help example: a config and a function without a head_dim attribute, no --head-dim
    mod, model = user_dir
    rc, out, err = run(capsys, str(model / "config.json"), f"{mod}:interleaved", "--json")
    assert rc == 1, err
    doc = json.loads(out)
    assert doc["a"]["layout"] == "half" and doc["b"]["layout"] == "interleaved"
    assert doc["a"]["rotary_dim"] == doc["b"]["rotary_dim"] == 64


# ---------------------------------------------------------------------------------------------
# whole checkpoints
# ---------------------------------------------------------------------------------------------


def _tiny_hf_checkpoint(path):
    pytest.importorskip("transformers")
    return tiny_models.saved(path)


def test_checkpoint_readings_agree(capsys, tmp_path):
    model = _tiny_hf_checkpoint(tmp_path / "m")
    rc, out, err = run(capsys, str(model))
    assert rc == 0, out + err
    assert "ropekit:" in out and "transformers 5." in out and "no disagreement found" in out
    # random-init weights: the layout is reported unknown, never guessed
    assert "the q/k weights show no layout" in out


def test_converted_interleaved_checkpoint_says_stock_transformers_runs_it_wrong(capsys, tmp_path):
    src = _tiny_hf_checkpoint(tmp_path / "m")
    dst = tmp_path / "m-interleaved"
    assert main(["convert", str(src), str(dst), "--layout", "interleaved", "--no-progress"]) == 0
    capsys.readouterr()
    rc, out, _ = run(capsys, str(dst))
    assert rc == 1
    assert "ropekit_layout='interleaved'" in out and "stock transformers" in out and "WRONG" in out
    assert "ropekit.hf.patch(model)" in out
    # the original is fine, and the two are the same rows permuted, by the named call
    rc, out, _ = run(capsys, str(src), str(dst))
    assert rc == 0, out
    assert "permute_qk(w, n_heads=..., head_dim=16, rotary_dim=16, src='half', dst='interleaved')" in out


def test_a_5x_config_under_transformers_4x_names_the_base_it_runs(tmp_path):
    old = str(release_dir("4.45.2"))
    model = tmp_path / "m"
    model.mkdir()
    cfg = {
        "model_type": "llama",
        "hidden_size": 512,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    }
    (model / "config.json").write_text(json.dumps(cfg))
    src = str(Path(rk.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + old}
    res = subprocess.run(
        [sys.executable, "-m", "ropekit", "doctor", str(model)], capture_output=True, text=True, timeout=300, env=env
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "transformers 4.45.2:" in res.stdout and "base=10000" in res.stdout
    assert "transformers 4.45.2 ignores 'rope_parameters'" in res.stdout and "it runs base 10000" in res.stdout
    readings = {line.split(":")[0].strip(): line for line in res.stdout.splitlines()[1:3]}
    assert readings["ropekit"].rstrip().endswith("half r=64/64 base=500000")
    # the disagreement between the two readings, with the fix
    assert "disagreement: transformers 4.45.2 and ropekit compute different RoPEs" in res.stdout


def test_litgpt_yarn_config_against_the_hf_one_says_where_they_part(capsys, tmp_path):
    yarn = {"factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0}
    (tmp_path / "model_config.yaml").write_text(
        "n_embd: 1024\nn_head: 8\nrotary_percentage: 1.0\nrope_base: 10000\nblock_size: 16384\n"
        "rope_adjustments: {factor: 4.0, beta_fast: 32.0, beta_slow: 1.0, original_max_seq_len: 4096}\n"
    )
    hf = tmp_path / "config.json"
    hf.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 1024,
                "num_attention_heads": 8,
                "max_position_embeddings": 16384,
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 10000.0,
                    "original_max_position_embeddings": 4096,
                }
                | yarn,
            }
        )
    )
    rc, out, _ = run(capsys, str(hf), str(tmp_path / "model_config.yaml"))
    assert rc == 1 and "verdict: NOT equivalent" in out
    assert "scaling: A yarn" in out and "B longrope" in out
    assert "LitGPT computes yarn with the ramp mirrored" in out
