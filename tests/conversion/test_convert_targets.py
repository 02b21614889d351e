"""A conversion the target cannot represent is refused, never written "successfully" wrong.

Meta's reference code is the oracle for what a params.json means.  Its loaders, as read in
meta-llama/llama (Llama 1/2: ``ModelArgs`` is a dataclass built with ``ModelArgs(max_seq_len=...,
max_batch_size=..., **params)``, theta fixed at 10000) and meta-llama/llama-models (Llama 3.x:
``rope_theta`` and ``use_scaled_rope``; ``apply_scaling`` hard-codes factor 8, low 1, high 4,
original context 8192) are restated here as field lists: the tests cannot fetch them at run time."""

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import ropekit as rk
from ropekit import convert

from checkpoints import KV, LLAMA31_ROPE, D, H, hf_tensors, make_hf_dir, quiet
from convert_cli import cli_error

LLAMA3 = LLAMA31_ROPE


@dataclasses.dataclass
class Llama2ModelArgs:  # the fields of meta-llama/llama llama/model.py ModelArgs
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    max_batch_size: int = 32
    max_seq_len: int = 2048


def test_llama2_params_load_in_metas_llama2_loader(tmp_path):
    """theta 10000 without scaling: Llama 1/2, whose loader raises TypeError on a rope_theta key."""
    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "meta", to="meta", **quiet())
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    Llama2ModelArgs(max_seq_len=512, max_batch_size=1, **params)  # as llama/generation.py builds it
    assert "rope_theta" not in params and "use_scaled_rope" not in params


def test_llama3_params_say_theta_and_scaling(tmp_path):
    src = make_hf_dir(tmp_path / "src", rope_parameters=LLAMA3)
    convert(src, tmp_path / "meta", to="meta", **quiet())
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["rope_theta"] == 500000.0 and params["use_scaled_rope"] is True
    with pytest.raises(TypeError):  # a Llama 3 params.json is not for the Llama 2 loader
        Llama2ModelArgs(max_seq_len=512, max_batch_size=1, **params)


def test_meta_generation_can_be_asked_for(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "m3", to="meta", meta_generation="llama3", **quiet())
    assert json.loads((tmp_path / "m3" / "params.json").read_text())["rope_theta"] == 10000.0
    theta = make_hf_dir(tmp_path / "theta", rope_parameters={"rope_theta": 500000.0, "rope_type": "default"})
    err = cli_error(capsys, theta, tmp_path / "m2", "--to", "meta", "--meta-generation", "llama2")
    assert "--meta-generation='llama2'" in err and "base=500000" in err, err
    assert not (tmp_path / "m2").exists()


@pytest.mark.parametrize("field, value", [("factor", 16.0), ("high_freq_factor", 2.0), ("low_freq_factor", 2.0)])
def test_llama3_scaling_meta_code_cannot_read_is_refused(tmp_path, capsys, field, value):
    """Meta's apply_scaling hard-codes its constants: factor 16 once became a rope_scaling_factor
    key no Meta loader of Llama 3 reads, and convert exited 0."""
    src = make_hf_dir(tmp_path / "src", rope_parameters=dict(LLAMA3, **{field: value}))
    err = cli_error(capsys, src, tmp_path / "meta", "--to", "meta")
    assert f"{field}={value!r}" in err and "hard-codes" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_partial_rotary_to_meta_is_refused(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src", partial_rotary_factor=0.5)
    assert "partial rotary" in cli_error(capsys, src, tmp_path / "meta", "--to", "meta")


def test_verify_rotates_each_side_with_its_own_config(tmp_path):
    """A Meta output whose params.json means other frequencies than the source's config fails
    verification (before: both sides were rotated with the source's spec, so it passed)."""
    from ropekit.conversion.formats import open_checkpoint
    from ropekit.conversion.verify import check_conversion

    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.float32), rope_parameters=LLAMA3)
    rep = convert(src, tmp_path / "meta", to="meta", verify=True, **quiet())
    assert rep.verify_max_rel < 1e-12
    wrong = make_hf_dir(tmp_path / "src16", hf_tensors(torch.float32), rope_parameters=dict(LLAMA3, factor=16.0))
    ckpt = open_checkpoint(wrong)
    _, rel, _ = check_conversion(ckpt, tmp_path / "meta", rk.from_config(wrong / "config.json"))
    assert rel > 1e-4


def test_params_json_with_keys_meta_llama3_ignores_is_refused(tmp_path, capsys):
    """rope_scaling_factor=16 (as ropekit once wrote) means factor 8 to Meta's Llama 3 code: ambiguous."""
    src = make_hf_dir(tmp_path / "src", rope_parameters=LLAMA3)
    convert(src, tmp_path / "meta", to="meta", **quiet())
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    params["rope_scaling_factor"] = 16.0
    (tmp_path / "meta" / "params.json").write_text(json.dumps(params))
    err = cli_error(capsys, tmp_path / "meta", tmp_path / "hf", "--to", "hf")
    assert "rope_scaling_factor=16.0" in err and "cannot tell" in err, err


# ---------------------------------------------------------------------------------------------
# stored frequencies
# ---------------------------------------------------------------------------------------------


def _with_inv_freq(tmp_path, values):
    t = hf_tensors(torch.float32)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = values
    sd = tmp_path / "sd.safetensors"
    save_file(t, sd)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"num_attention_heads": H, "num_key_value_heads": KV, "hidden_size": H * D}))
    return sd, cfg


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_inv_freq_verify_refuses_non_finite_frequencies(tmp_path, capsys, bad):
    """NaN compared "not greater than the tolerance" and passed."""
    exact = rk.inv_freq(rk.RopeSpec(head_dim=D))[0].float()
    exact[1] = bad
    sd, cfg = _with_inv_freq(tmp_path, exact)
    spec = tmp_path / "spec.json"
    spec.write_text(rk.RopeSpec(head_dim=D).to_json())
    err = cli_error(capsys, sd, tmp_path / "o.safetensors", "--inv-freq", "verify", "--spec", spec, "--config", cfg)
    assert "non-finite frequency (index 1" in err, err
    assert not (tmp_path / "o.safetensors").exists()


def test_inv_freq_add_with_a_spec_of_another_head_dim_is_refused(tmp_path, capsys):
    """--spec head_dim 16 for a model of head_dim 8 once added tensors of the wrong shape."""
    src = make_hf_dir(tmp_path / "src")
    spec = tmp_path / "spec.json"
    spec.write_text(rk.RopeSpec(head_dim=2 * D).to_json())
    err = cli_error(capsys, src, tmp_path / "dst", "--inv-freq", "add", "--spec", spec)
    assert f"head_dim={2 * D}" in err and f"has head_dim={D}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json", "src"]


def test_meta_rope_freqs_is_not_copied_into_every_layer(tmp_path):
    """Meta -> transformers once wrote rope.freqs (bf16 here) as every layer's inv_freq by default;
    transformers' own converter drops it, and so does this one (saying so)."""
    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "meta", to="meta", inv_freq="add", **quiet())
    sd = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    assert "rope.freqs" in sd
    lines = []
    rep = convert(tmp_path / "meta", tmp_path / "hf", to="hf", progress=False, log=lines.append)
    from checkpoints import read_all

    assert not [n for n in read_all(tmp_path / "hf") if "inv_freq" in n]
    assert rep.dropped == 1 and any("rope.freqs not copied" in line for line in lines), lines
    # asked for, they come back exact in float32, one per layer
    convert(tmp_path / "meta", tmp_path / "hf_f", to="hf", inv_freq="add", **quiet())
    stored = {n: t for n, t in read_all(tmp_path / "hf_f").items() if "inv_freq" in n}
    assert len(stored) == 2 and all(t.dtype == torch.float32 for t in stored.values())


def test_verify_reads_the_output_with_the_reference_readers(tmp_path, monkeypatch):
    """--verify once re-read DST with ropekit's own reader, so a writer and reader sharing a bug
    passed; now every output file goes through safetensors.safe_open / torch.load(weights_only=True)."""
    import safetensors

    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.float32))
    opened, loaded = [], []
    real_open, real_load = safetensors.safe_open, torch.load
    monkeypatch.setattr(safetensors, "safe_open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: loaded.append((str(path), k)) or real_load(path, *a, **k))
    convert(src, tmp_path / "inter", layout="interleaved", verify=True, **quiet())
    assert sorted(os.path.basename(p) for p in opened) == sorted(
        p.name for p in (tmp_path / "inter").glob("*.safetensors")
    )
    convert(src, tmp_path / "meta", to="meta", verify=True, **quiet())
    assert [(os.path.basename(p), k.get("weights_only")) for p, k in loaded] == [("consolidated.00.pth", True)]


def test_a_fifo_given_as_spec_or_config_is_refused_without_blocking(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    os.mkfifo(tmp_path / "fifo")
    assert "is not a regular file" in cli_error(
        capsys, src, tmp_path / "d", "--inv-freq", "add", "--spec", tmp_path / "fifo"
    )
    sd = tmp_path / "sd.safetensors"
    save_file(hf_tensors(), sd)
    assert "is a FIFO" in cli_error(
        capsys, sd, tmp_path / "o.safetensors", "--layout", "interleaved", "--config", tmp_path / "fifo"
    )


def test_verify_catches_a_copied_tensor_with_wrong_bytes(tmp_path):
    """A writer that damages a pass-through tensor (q/k scores cannot see it) fails --verify."""
    from ropekit.conversion.formats.safetensors_io import SafetensorsWriter
    from ropekit.conversion.stream import Writers

    class Damaging(SafetensorsWriter):
        def close(self):
            super().close()
            with open(self.path, "r+b") as f:  # flip one byte of the last tensor's data
                f.seek(-1, 2)
                b = f.read(1)
                f.seek(-1, 2)
                f.write(bytes([b[0] ^ 0x40]))

    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.float32))
    with pytest.raises(rk.RopeCheckpointError, match="verify failed: .* is not a copy of"):
        convert(
            src, tmp_path / "d", layout="interleaved", verify=True, writers=Writers(safetensors=Damaging), **quiet()
        )


def test_verify_reports_an_unreadable_output_in_one_error(tmp_path):
    """A damaged output is a RopeCheckpointError of --verify, not a traceback from a reader."""
    from ropekit.conversion.formats.pth_writer import PthZipWriter
    from ropekit.conversion.stream import Writers

    class Truncating(PthZipWriter):
        def close(self):
            super().close()
            os.truncate(self.path, 100)

    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.float32))
    with pytest.raises(rk.RopeCheckpointError, match="consolidated.00.pth"):
        convert(src, tmp_path / "m", to="meta", verify=True, writers=Writers(pth=Truncating), **quiet())
