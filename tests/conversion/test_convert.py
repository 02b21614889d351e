"""ropekit convert: formats, inv_freq policies, atomicity under interruption, and one-line errors.

Checkpoints here are written with the safetensors library and torch.save directly (not with
ropekit), so the reader is tested against files it did not produce."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import ropekit as rk
from ropekit import convert
from ropekit.cli import main

from checkpoints import (
    FFN,
    HIDDEN,
    KV,
    LAYERS,
    LLAMA31_ROPE,
    ROOT,
    D,
    H,
    hf_config,
    hf_tensors,
    make_hf_dir,
    quiet,
    read_all,
    same_bytes,
    tree_digest,
)
from convert_cli import cli_error, slow_cli


def test_safetensors_reader_agrees_with_safetensors_library(tmp_path):
    from ropekit.conversion.formats.safetensors_io import SafetensorsFile, SafetensorsWriter

    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).view(2, 3),
        "d": torch.tensor([True, False, True]),
        "e": torch.randn(4).to(torch.float8_e4m3fn),
        "f": torch.zeros(0, 3),
        "g": torch.randn(2, 2).half(),
    }
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt", "k": "v"})
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert sorted(f.names()) == sorted(tensors) and f.metadata == {"format": "pt", "k": "v"}
    for n, t in tensors.items():
        assert same_bytes(f.tensor(n), t), n
    # and what our streaming writer produces, the library reads back
    w = SafetensorsWriter(
        tmp_path / "y.safetensors", [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], {"format": "pt"}
    )
    for n, t in tensors.items():
        w.write_tensor(n, t)
    w.close()
    back = read_all(tmp_path / "y.safetensors")
    assert all(same_bytes(back[n], t) for n, t in tensors.items())


def test_layout_round_trip_is_byte_identical_and_only_qk_change(tmp_path):
    src = make_hf_dir(tmp_path / "src", tensors=hf_tensors(bias=True))
    before = tree_digest(src)
    rep = convert(src, tmp_path / "inter", layout="interleaved", **quiet())
    assert (rep.permuted, rep.copied) == (4 * LAYERS, len(hf_tensors(bias=True)) - 4 * LAYERS)
    convert(tmp_path / "inter", tmp_path / "back", layout="half", **quiet())
    a, mid, b = read_all(src), read_all(tmp_path / "inter"), read_all(tmp_path / "back")
    assert sorted(a) == sorted(mid) == sorted(b)
    for n in a:
        assert same_bytes(a[n], b[n]), n
        if "q_proj" in n or "k_proj" in n:
            heads = H if "q_proj" in n else KV
            assert torch.equal(mid[n], rk.permute_qk(a[n], heads, D, src="half", dst="interleaved")), n
            assert not torch.equal(mid[n], a[n])
        else:
            assert same_bytes(mid[n], a[n]), n  # byte-identical pass-through
    assert json.loads((tmp_path / "inter" / "config.json").read_text())["ropekit_layout"] == "interleaved"
    assert "ropekit_layout" not in json.loads((tmp_path / "back" / "config.json").read_text())
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    assert (tmp_path / "back" / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    assert tree_digest(src) == before
    assert not list(tmp_path.glob(".*ropekit*"))  # no temporary left behind


def test_dry_run_lists_changes_and_writes_nothing(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    assert main(["convert", str(src), str(tmp_path / "dst"), "--layout", "interleaved", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "permute  model.layers.1.self_attn.k_proj.weight" in err and "mlp" not in err
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst*"))


def test_dry_run_over_an_existing_dst_reports_it_and_touches_nothing(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "dst", **quiet())
    before = tree_digest(tmp_path / "dst")
    assert main(["convert", str(src), str(tmp_path / "dst"), "--layout", "interleaved", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "permute  model.layers.1.self_attn.k_proj.weight" in err and "needs --force" in err
    assert tree_digest(tmp_path / "dst") == before and not list(tmp_path.glob(".dst*"))
    assert (
        main(["convert", str(src), str(tmp_path / "dst"), "--layout", "interleaved"]) == 2
    )  # the real run still refuses


def _meta_split(meta1: Path, out: Path, n: int) -> list[dict]:
    """Split a single-file Meta checkpoint into n model-parallel shards by Meta's rules."""
    sd = torch.load(meta1 / "consolidated.00.pth", weights_only=True)
    parts = [{} for _ in range(n)]
    for name, t in sd.items():
        leaf = name.split(".")[-2] if name.count(".") >= 2 else name
        if leaf in ("wq", "wk", "wv", "w1", "w3") or name == "output.weight":
            chunks = t.chunk(n, dim=0)
        elif leaf in ("wo", "w2") or name == "tok_embeddings.weight":
            chunks = t.chunk(n, dim=1)  # Llama 2 splits the embedding along the model dim
        else:
            chunks = (t,) * n
        for p, c in zip(parts, chunks):
            p[name] = c.clone()
    out.mkdir()
    for i, p in enumerate(parts):
        torch.save(p, out / f"consolidated.{i:02d}.pth")
    (out / "params.json").write_bytes((meta1 / "params.json").read_bytes())
    return parts


def test_meta_model_parallel_shards_merge(tmp_path):
    """Two Meta model-parallel shards (split here by Meta's rules) convert like the merged single file."""
    single = make_hf_dir(tmp_path / "hf")
    convert(single, tmp_path / "meta1", to="meta", **quiet())
    _meta_split(tmp_path / "meta1", tmp_path / "meta2", 2)
    convert(tmp_path / "meta2", tmp_path / "hf2", to="hf", **quiet())
    a, b = read_all(single), read_all(tmp_path / "hf2")
    assert sorted(a) == sorted(b) and all(same_bytes(a[n], b[n]) for n in a)


def test_error_meta_model_parallel_shards_disagree(tmp_path, capsys):
    convert(make_hf_dir(tmp_path / "hf"), tmp_path / "meta1", to="meta", **quiet())
    _meta_split(tmp_path / "meta1", tmp_path / "three", 4)  # KV=2 kv heads cannot spread over 4 ranks
    assert "n_kv_heads=2 does not divide across 4 model-parallel shards" in cli_error(
        capsys, tmp_path / "three", tmp_path / "o"
    )
    parts = _meta_split(tmp_path / "meta1", tmp_path / "two", 2)
    parts[1]["layers.1.attention.wk.weight"] = parts[1]["layers.1.attention.wk.weight"][:, :-2].clone()
    torch.save(parts[1], tmp_path / "two" / "consolidated.01.pth")
    err = cli_error(capsys, tmp_path / "two", tmp_path / "o")
    assert (
        "tensor layers.1.attention.wk.weight is bfloat16[8, 30] in consolidated.01.pth "
        "but bfloat16[8, 32] in consolidated.00.pth" in err
    )
    del parts[1]["layers.0.ffn_norm.weight"]
    torch.save(parts[1], tmp_path / "two" / "consolidated.01.pth")
    assert "model-parallel shard consolidated.01.pth holds different tensors than consolidated.00.pth" in cli_error(
        capsys, tmp_path / "two", tmp_path / "o"
    )


def test_state_dict_pt_with_config(tmp_path):
    """A plain .pt state dict with Meta names (interleaved) -> half, head counts from params.json."""
    meta_sd = {
        "layers.0.attention.wq.weight": torch.randn(H * D, HIDDEN),
        "layers.0.attention.wk.weight": torch.randn(KV * D, HIDDEN),
        "layers.0.attention.wv.weight": torch.randn(KV * D, HIDDEN),
    }
    torch.save(meta_sd, tmp_path / "sd.pt")
    (tmp_path / "params.json").write_text(json.dumps({"dim": HIDDEN, "n_heads": H, "n_kv_heads": KV, "n_layers": 1}))
    log = []
    convert(
        tmp_path / "sd.pt",
        tmp_path / "half.pt",
        layout="half",
        config=tmp_path / "params.json",
        progress=False,
        log=log.append,
    )
    assert any("source layout: interleaved" in line for line in log)  # the guess is said out loud
    out = torch.load(tmp_path / "half.pt", weights_only=True)
    assert torch.equal(
        out["layers.0.attention.wk.weight"], rk.permute_qk(meta_sd["layers.0.attention.wk.weight"], KV, D)
    )
    assert torch.equal(out["layers.0.attention.wv.weight"], meta_sd["layers.0.attention.wv.weight"])


# ---------------------------------------------------------------------------------------------
# the seed case: persistent rotary_emb.inv_freq
# ---------------------------------------------------------------------------------------------


def _v4_state_dict(path: Path, base: float) -> dict:
    """A transformers-v4-era checkpoint: every layer stores rotary_emb.inv_freq, computed in float32
    the way transformers did (1 / base ** (arange(0, d, 2) / d))."""
    t = hf_tensors(torch.float32)
    inv = 1.0 / (base ** (torch.arange(0, D, 2).float() / D))
    for i in range(LAYERS):
        t[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    save_file(t, path)
    return t


def test_inv_freq_drop_then_add_round_trip(tmp_path, capsys):
    src = tmp_path / "v4.safetensors"
    orig = _v4_state_dict(src, 10000.0)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(rk.RopeSpec(head_dim=D, base=10000.0).to_json())

    assert main(["convert", str(src), str(tmp_path / "v5.safetensors"), "--inv-freq", "drop", "--no-progress"]) == 0
    v5 = read_all(tmp_path / "v5.safetensors")
    assert not [n for n in v5 if "inv_freq" in n]
    assert sorted(v5) == sorted(n for n in orig if "inv_freq" not in n)
    assert all(same_bytes(v5[n], orig[n]) for n in v5)

    assert (
        main(
            [
                "convert",
                str(tmp_path / "v5.safetensors"),
                str(tmp_path / "v4b.safetensors"),
                "--inv-freq",
                "add",
                "--spec",
                str(spec_path),
                "--no-progress",
            ]
        )
        == 0
    )
    v4b = read_all(tmp_path / "v4b.safetensors")
    assert sorted(v4b) == sorted(orig)
    exact = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    for n in orig:
        if "inv_freq" in n:
            assert v4b[n].dtype == torch.float32
            assert torch.equal(v4b[n], exact.float())  # exact frequencies, rounded once
            torch.testing.assert_close(v4b[n], orig[n], rtol=4e-7, atol=0)  # transformers' fp32 values, to an ulp
        else:
            assert same_bytes(v4b[n], orig[n]), n
    # and the added ones verify
    capsys.readouterr()
    assert (
        main(
            [
                "convert",
                str(tmp_path / "v4b.safetensors"),
                str(tmp_path / "chk.safetensors"),
                "--inv-freq",
                "verify",
                "--spec",
                str(spec_path),
                "--dry-run",
            ]
        )
        == 0
    )
    assert "2 stored tensor(s) match the spec, max |diff|" in capsys.readouterr().err


def test_inv_freq_verify_catches_a_wrong_base(tmp_path, capsys):
    src = tmp_path / "v4.safetensors"
    _v4_state_dict(src, 10000.0)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(rk.RopeSpec(head_dim=D, base=10000.0).to_json())
    bad.write_text(rk.RopeSpec(head_dim=D, base=500000.0).to_json())
    assert (
        main(
            [
                "convert",
                str(src),
                str(tmp_path / "o1.safetensors"),
                "--inv-freq",
                "verify",
                "--spec",
                str(good),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "match the spec, max |diff|" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(src),
                str(tmp_path / "o2.safetensors"),
                "--inv-freq",
                "verify",
                "--spec",
                str(bad),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model.layers.0.self_attn.rotary_emb.inv_freq disagrees with the spec (base=500000" in err
    assert not (tmp_path / "o2.safetensors").exists()
    # even a base off by 0.1% is caught: the fp32 values are far more precise than that
    _v4_state_dict(tmp_path / "close.safetensors", 10010.0)
    assert (
        main(
            [
                "convert",
                str(tmp_path / "close.safetensors"),
                str(tmp_path / "o3.safetensors"),
                "--inv-freq",
                "verify",
                "--spec",
                str(good),
                "--no-progress",
            ]
        )
        == 2
    )


# ---------------------------------------------------------------------------------------------
# atomicity: interrupted runs leave no DST and an untouched SRC
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_injected_failure_leaves_no_dst(tmp_path, exc):
    src = make_hf_dir(tmp_path / "src")
    before = tree_digest(src)
    seen = []

    def boom(step):
        seen.append(step)
        if len(seen) == 5:
            raise exc

    with pytest.raises(type(exc)):
        convert(src, tmp_path / "dst", layout="interleaved", after_tensor=boom, progress=False, log=lambda s: None)
    assert len(seen) == 5
    assert not (tmp_path / "dst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # the partial sibling is gone too
    assert tree_digest(src) == before


def test_failed_force_keeps_the_old_dst(tmp_path):
    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "dst", layout="interleaved", **quiet())
    old = tree_digest(tmp_path / "dst")

    def boom(step):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        convert(
            src,
            tmp_path / "dst",
            layout="interleaved",
            force=True,
            after_tensor=boom,
            progress=False,
            log=lambda s: None,
        )
    assert tree_digest(tmp_path / "dst") == old
    convert(src, tmp_path / "dst", force=True, **quiet())  # --force replaces it
    assert "ropekit_layout" not in json.loads((tmp_path / "dst" / "config.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_process_leaves_no_dst(tmp_path, sig):
    src = make_hf_dir(tmp_path / "src")
    before = tree_digest(src)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            slow_cli(copy_delay=0.05),
            "convert",
            str(src),
            str(tmp_path / "dst"),
            "--layout",
            "interleaved",
            "--no-progress",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while not any(
        any(p.glob("*.safetensors")) for p in tmp_path.glob(".dst.ropekit-partial-*")
    ):  # files, not just the dir
        assert proc.poll() is None and time.time() < deadline, "conversion ended before it could be interrupted"
        time.sleep(0.005)
    proc.send_signal(sig)
    rc = proc.wait(30)
    assert not (tmp_path / "dst").exists()
    assert tree_digest(src) == before
    if sig == signal.SIGTERM:
        assert rc == 130 and proc.stderr.read().decode().strip().endswith("interrupted")
        assert not list(tmp_path.glob(".dst*"))  # cleaned up on the way out
    else:
        assert rc == -signal.SIGKILL
        assert list(tmp_path.glob(".dst.ropekit-partial-*"))  # SIGKILL cannot clean up ...
        convert(src, tmp_path / "dst", layout="interleaved", **quiet())  # ... the next run does
        assert not list(tmp_path.glob(".dst*")) and (tmp_path / "dst").is_dir()
    proc.stderr.close()


# ---------------------------------------------------------------------------------------------
# --verify
# ---------------------------------------------------------------------------------------------


def test_verify_detects_a_layout_mismatch(tmp_path):
    from ropekit.conversion.formats import open_checkpoint
    from ropekit.conversion.verify import compare_scores

    src = make_hf_dir(tmp_path / "src", tensors=hf_tensors(torch.float32))
    convert(src, tmp_path / "inter", layout="interleaved", **quiet())
    spec = rk.RopeSpec(head_dim=D)
    ok = compare_scores(open_checkpoint(src), open_checkpoint(tmp_path / "inter"), spec)
    assert ok[1] < 1e-12
    # the same rows, but a config that claims "half": the scores no longer agree
    cfg = json.loads((tmp_path / "inter" / "config.json").read_text())
    del cfg["ropekit_layout"]
    (tmp_path / "inter" / "config.json").write_text(json.dumps(cfg))
    bad = compare_scores(open_checkpoint(src), open_checkpoint(tmp_path / "inter"), spec)
    assert bad[1] > 1e-2


# ---------------------------------------------------------------------------------------------
# errors: exit code 2, one line, naming the tensor / file and the numbers
# ---------------------------------------------------------------------------------------------


def test_error_missing_shard(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    (src / "model-00002-of-00003.safetensors").unlink()
    err = cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert "shard model-00002-of-00003.safetensors named in model.safetensors.index.json" in err and "missing" in err
    assert "for tensor model." in err


def test_error_qk_rows_do_not_match_heads(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src", num_key_value_heads=1)  # the k_proj tensors hold 2 kv heads
    err = cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert "model.layers.0.self_attn.k_proj.weight has shape [16, 32]" in err and "needs 8 rows" in err


@pytest.mark.parametrize(
    "over,needle",
    [
        ({"num_key_value_heads": 3}, "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
        ({"hidden_size": 30}, "hidden_size=30 is not divisible by num_attention_heads=4"),
    ],
)
def test_error_head_counts_do_not_divide(tmp_path, capsys, over, needle):
    src = make_hf_dir(tmp_path / "src", **over)
    assert needle in cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")


def test_error_unknown_format(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "weights.npz").write_bytes(b"x")
    assert "unknown checkpoint format at" in cli_error(capsys, tmp_path / "src", tmp_path / "dst")


@pytest.mark.parametrize(
    "garbage,needle",
    [
        (b"\xff" * 8, "does not fit in the file"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}\x00\x00\x00\x00\x00\x00", "header is not JSON"),
    ],
)
def test_error_corrupt_safetensors_header(tmp_path, capsys, garbage, needle):
    src = make_hf_dir(tmp_path / "src")
    shard = src / "model-00003-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[: len(garbage)] = garbage
    shard.write_bytes(bytes(data))
    err = cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert f"corrupt safetensors header in {shard}" in err and needle in err


def test_error_truncated_safetensors(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    shard = src / "model-00001-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert "past the end of the file" in cli_error(capsys, src, tmp_path / "dst")


def test_error_dst_inside_src_and_existing_dst(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    assert "is inside SRC" in cli_error(capsys, src, src / "sub", "--layout", "interleaved")
    assert "is inside SRC" in cli_error(capsys, src, src, "--layout", "interleaved")
    assert "is inside DST" in cli_error(capsys, src, tmp_path, "--layout", "interleaved", "--force")
    (tmp_path / "dst").mkdir()
    assert "exists; pass --force" in cli_error(capsys, src, tmp_path / "dst")
    assert not (src / "sub").exists()


def test_error_meta_needs_interleaved_and_llama(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    assert "interleaved by definition" in cli_error(capsys, src, tmp_path / "m", "--to", "meta", "--layout", "half")
    qwen = make_hf_dir(tmp_path / "qwen", model_type="qwen2")
    assert "model_type='qwen2' has no Meta checkpoint form" in cli_error(capsys, qwen, tmp_path / "m", "--to", "meta")
    linear = make_hf_dir(
        tmp_path / "linear", rope_parameters={"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}
    )
    assert "rope_type='linear' has no Meta params.json form" in cli_error(
        capsys, linear, tmp_path / "m", "--to", "meta"
    )
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_error_state_dict_without_head_counts(tmp_path, capsys):
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.randn(H * D, HIDDEN)}, tmp_path / "sd.safetensors")
    assert "needs its head counts: pass --config" in cli_error(
        capsys, tmp_path / "sd.safetensors", tmp_path / "o.safetensors", "--layout", "interleaved"
    )
    assert "needs the model's RoPE spec" in cli_error(
        capsys, tmp_path / "sd.safetensors", tmp_path / "o.safetensors", "--inv-freq", "add"
    )


def test_error_pickle_with_code_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"w": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pt")
    assert "is not a weights-only PyTorch state dict" in cli_error(capsys, tmp_path / "evil.pt", tmp_path / "o.pt")
    assert not (tmp_path / "pwned").exists()


def test_tied_embeddings_to_meta_store_output(tmp_path):
    t = hf_tensors()
    del t["lm_head.weight"]
    src = make_hf_dir(tmp_path / "src", tensors=t, tie_word_embeddings=True)
    convert(src, tmp_path / "meta", to="meta", **quiet())
    meta = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True, mmap=True)
    assert same_bytes(meta["output.weight"], t["model.embed_tokens.weight"])
    assert same_bytes(meta["tok_embeddings.weight"], t["model.embed_tokens.weight"])
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    # theta 10000 without scaling is Llama 1/2, whose ModelArgs (a dataclass) refuses a rope_theta key
    assert params["n_kv_heads"] == KV and "rope_theta" not in params
    # Meta's FeedForward sizing rule, as in Meta's reference model code, gives back the FFN width
    ffn = int(2 * (4 * params["dim"]) / 3)
    if params.get("ffn_dim_multiplier") is not None:
        ffn = int(params["ffn_dim_multiplier"] * ffn)
    ffn = params["multiple_of"] * ((ffn + params["multiple_of"] - 1) // params["multiple_of"])
    assert ffn == FFN


def test_pth_views_and_shared_storages_read_correctly(tmp_path):
    """torch.save keeps views: a slice with a storage offset is read by byte range, a transposed
    (non-contiguous) one through torch's own memory-mapped load."""
    big, sq = torch.randn(10, 4), torch.randn(3, 5)
    sd = {"slice": big[2:5], "rest": big[5:], "transposed": sq.T, "rotary_emb.inv_freq": torch.ones(2)}
    torch.save(sd, tmp_path / "sd.pth")
    from ropekit.conversion.formats import open_checkpoint

    ck = open_checkpoint(tmp_path / "sd.pth")
    assert ck.byte_range("slice") is not None and ck.byte_range("transposed") is None  # kernel copy / torch's load
    convert(tmp_path / "sd.pth", tmp_path / "out.pth", inv_freq="drop", **quiet())
    out = torch.load(tmp_path / "out.pth", weights_only=True)
    assert sorted(out) == ["rest", "slice", "transposed"]
    assert all(torch.equal(out[n], sd[n]) for n in out)
    convert(tmp_path / "sd.pth", tmp_path / "out.safetensors", inv_freq="drop", **quiet())
    out = read_all(tmp_path / "out.safetensors")
    assert sorted(out) == ["rest", "slice", "transposed"] and all(torch.equal(out[n], sd[n]) for n in out)


def test_lora_adapter_b_matrices_permute_and_a_stay(tmp_path):
    """A PEFT adapter (q/k/v LoRA) against the base model's config: lora_B rows are q/k rows and
    move; lora_A acts on the input side and stays; the update B @ A moves like the full weight."""
    r = 3
    g = torch.Generator().manual_seed(5)
    pre = "base_model.model.model.layers.0.self_attn."
    sd = {}
    for proj, rows in (("q_proj", H * D), ("k_proj", KV * D), ("v_proj", KV * D)):
        sd[pre + proj + ".lora_A.weight"] = torch.randn(r, HIDDEN, generator=g)
        sd[pre + proj + ".lora_B.weight"] = torch.randn(rows, r, generator=g)
    save_file(sd, tmp_path / "adapter_model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    rep = convert(
        tmp_path / "adapter_model.safetensors",
        tmp_path / "inter.safetensors",
        layout="interleaved",
        config=tmp_path / "config.json",
        **quiet(),
    )
    assert (rep.permuted, rep.copied) == (2, 4)
    out = read_all(tmp_path / "inter.safetensors")
    for proj, heads in (("q_proj", H), ("k_proj", KV)):
        a, b = sd[pre + proj + ".lora_A.weight"], sd[pre + proj + ".lora_B.weight"]
        assert same_bytes(out[pre + proj + ".lora_A.weight"], a)
        delta = out[pre + proj + ".lora_B.weight"] @ out[pre + proj + ".lora_A.weight"]
        assert torch.equal(delta, rk.permute_qk(b @ a, heads, D, src="half", dst="interleaved")), proj
    assert all(same_bytes(out[n], sd[n]) for n in sd if "v_proj" in n)


@pytest.mark.parametrize("to", [None, "meta"])
def test_without_kernel_copy_the_bytes_match_and_the_report_says_so(tmp_path, monkeypatch, to):
    """A file system without copy_file_range (EXDEV/EOPNOTSUPP): same bytes, and a visible note."""
    import errno

    calls = []

    def refuse(*a):
        calls.append(a)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "ref", to=to, layout="interleaved", **quiet())
    monkeypatch.setattr(os, "copy_file_range", refuse)
    log = []
    convert(src, tmp_path / "dst", to=to, layout="interleaved", progress=False, log=log.append)
    # both writers keep the source's in-page offsets (safetensors: header padding; .pth: zip
    # extra-field padding), so the kernel copy is tried (and refused) and the report says so
    noted = sum("through user space" in line and "copy_file_range" in line for line in log)
    assert (noted, bool(calls)) == (1, True), log
    for f in sorted((tmp_path / "ref").iterdir()):
        assert f.read_bytes() == (tmp_path / "dst" / f.name).read_bytes(), f.name


def test_llama3_scaling_survives_hf_meta_hf(tmp_path):
    """rope parameters go through ropekit.dialects both ways: Llama 3.1's llama3 scaling (Meta's
    hard-coded constants) reads back to the same spec from params.json and from the regenerated
    config.json, and transformers reads the same parameters."""
    from transformers import LlamaConfig

    llama3 = dict(LLAMA31_ROPE)
    src = make_hf_dir(tmp_path / "hf", rope_parameters=llama3, max_position_embeddings=131072)
    convert(src, tmp_path / "meta", to="meta", **quiet())
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["use_scaled_rope"] is True and params["rope_theta"] == 500000.0
    assert not any(k.startswith("rope_scaling") for k in params)  # Meta's code would not read them
    convert(tmp_path / "meta", tmp_path / "hf2", to="hf", **quiet())

    def key(spec):
        return spec.head_dim, spec.rotary_dim, spec.base, spec.scaling

    want = rk.from_config(src / "config.json")
    assert want.scaling.kind == "llama3" and want.scaling.factor == 8.0
    assert key(rk.from_config(tmp_path / "meta" / "params.json")) == key(want)
    assert rk.from_config(tmp_path / "meta" / "params.json").layout == "interleaved"
    assert key(rk.from_config(tmp_path / "hf2" / "config.json")) == key(want)
    cfg = LlamaConfig.from_pretrained(tmp_path / "hf2")
    assert {k: cfg.rope_parameters[k] for k in llama3} == llama3
    # and the stored frequencies of the Meta side, added from that spec, verify against it
    convert(tmp_path / "meta", tmp_path / "meta_f", inv_freq="add", **quiet())
    freqs = torch.load(tmp_path / "meta_f" / "consolidated.00.pth", weights_only=True)["rope.freqs"]
    assert torch.equal(freqs, rk.inv_freq(want)[0].float())
    rep = convert(tmp_path / "meta_f", tmp_path / "chk", inv_freq="verify", dry_run=True, **quiet())
    assert rep.inv_freq_max_abs < 1e-9


def test_output_keeps_the_source_page_offsets_and_merges_copies(tmp_path, monkeypatch):
    """The kernel copies page-cache pages fastest at equal in-page offsets: a layout conversion
    pads each new header so that its data starts where the source's does (mod 4096), and copies
    runs of untouched tensors in one call."""
    from ropekit.conversion.formats import safetensors_io
    from ropekit.conversion.formats.safetensors_io import SafetensorsFile

    src = make_hf_dir(tmp_path / "src", n_shards=2)
    calls = []
    real = safetensors_io.copy_bytes
    monkeypatch.setattr(safetensors_io, "copy_bytes", lambda *a, **k: calls.append(a) or real(*a, **k))
    rep = convert(src, tmp_path / "dst", layout="interleaved", **quiet())
    assert 0 < len(calls) < rep.copied
    for f in sorted(src.glob("*.safetensors")):
        a, b = SafetensorsFile(f), SafetensorsFile(tmp_path / "dst" / f.name)
        assert b.data_start % 4096 == a.data_start % 4096 and b.data_start % 8 == 0
        assert b.data_start - a.data_start < 4096 + 64  # padding is bounded by a page
    back = read_all(tmp_path / "dst")
    untouched = {n: t for n, t in read_all(src).items() if "q_proj" not in n and "k_proj" not in n}
    assert len(untouched) == rep.copied and all(same_bytes(back[n], t) for n, t in untouched.items())


def test_safetensors_writer_any_order_each_tensor_once(tmp_path):
    from ropekit.conversion.formats.safetensors_io import SafetensorsWriter

    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int16), "c": torch.randn(2).double()}
    src = tmp_path / "src.safetensors"
    save_file({"c": tensors["c"]}, src)
    w = SafetensorsWriter(
        tmp_path / "y.safetensors", [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], {"format": "pt"}
    )
    from ropekit.conversion.formats.safetensors_io import SafetensorsFile

    info = SafetensorsFile(src).infos["c"]
    w.copy_range("c", str(src), info.start, info.end)  # last tensor first, by kernel copy
    w.write_tensor("b", tensors["b"])
    with pytest.raises(RuntimeError, match="already written"):
        w.write_tensor("b", tensors["b"])
    with pytest.raises(RuntimeError, match="closed before writing"):
        w.close()
    w = SafetensorsWriter(
        tmp_path / "z.safetensors", [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], {"format": "pt"}
    )
    for n in ("c", "a", "b"):
        w.write_tensor(n, tensors[n])
    w.close()
    back = read_all(tmp_path / "z.safetensors")
    assert all(same_bytes(back[n], t) for n, t in tensors.items())
