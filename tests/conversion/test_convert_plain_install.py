"""`ropekit convert` on a plain install: without tqdm, numpy or (where nothing needs numbers) torch.

Each run is a subprocess whose ``sitecustomize`` makes the named modules unimportable, as on a
machine where they were never installed."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ropekit import convert

from checkpoints import ROOT, hf_tensors, make_hf_dir, quiet, tree_digest

_SHIM = """
import importlib.abc, os, sys
BLOCKED = set(os.environ["ROPEKIT_TEST_BLOCK"].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def run_without(tmp_path, blocked, *argv):
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(_SHIM)
    env = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{ROOT / 'src'}", ROPEKIT_TEST_BLOCK=",".join(blocked))
    return subprocess.run(
        [sys.executable, "-m", "ropekit", "convert", *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_shim_really_blocks(tmp_path):
    out = run_without(tmp_path, ["tqdm"], "--help")
    assert out.returncode == 0
    shim_env = dict(os.environ, PYTHONPATH=str(tmp_path / "shim"), ROPEKIT_TEST_BLOCK="tqdm")
    probe = subprocess.run([sys.executable, "-c", "import tqdm"], env=shim_env, capture_output=True, text=True)
    assert probe.returncode == 1 and "blocked by the test" in probe.stderr


def test_convert_with_a_progress_bar_but_no_tqdm(tmp_path):
    """tqdm is optional: the progress bar once raised ModuleNotFoundError on the plain install."""
    src = make_hf_dir(tmp_path / "src")
    out = run_without(tmp_path, ["tqdm"], src, tmp_path / "dst", "--layout", "interleaved")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and (tmp_path / "dst" / "config.json").is_file()


def _meta_two_shards(tmp_path):
    """A Meta directory with two model-parallel shards, split as Meta's code splits them."""
    meta = tmp_path / "meta1"
    convert(make_hf_dir(tmp_path / "hf", hf_tensors(torch.float32)), meta, to="meta", **quiet())
    sd = torch.load(meta / "consolidated.00.pth", weights_only=True)
    out = tmp_path / "meta2"
    out.mkdir()
    parts = [{}, {}]
    for name, t in sd.items():
        leaf = name.split(".")[-2] if name.count(".") >= 2 else ""
        if leaf in ("wq", "wk", "wv", "w1", "w3") or name == "output.weight":
            pieces = t.chunk(2, 0)
        elif leaf in ("wo", "w2") or name == "tok_embeddings.weight":
            pieces = t.chunk(2, 1)
        else:
            pieces = (t, t)
        for p, piece in zip(parts, pieces):
            p[name] = piece.clone()
    for i, p in enumerate(parts):
        torch.save(p, out / f"consolidated.{i:02d}.pth")
    (out / "params.json").write_text((meta / "params.json").read_text())
    return out


def test_multi_shard_meta_to_hf_without_numpy(tmp_path):
    """Merging model-parallel shards goes through torch.cat; writing the result once needed numpy."""
    src = _meta_two_shards(tmp_path)
    out = run_without(tmp_path, ["numpy"], src, tmp_path / "hf2", "--to", "hf", "--no-progress")
    assert out.returncode == 0, out.stderr
    from safetensors.torch import load_file

    got = load_file(tmp_path / "hf2" / "model.safetensors")
    ref = load_file(tmp_path / "hf" / "model-00001-of-00003.safetensors")
    name = next(n for n in ref if "down_proj" in n)  # a row-parallel weight: concatenated along dim 1
    assert torch.equal(got[name], ref[name])


@pytest.mark.parametrize("flags", [["--verify"], ["--inv-freq", "add"], ["--inv-freq", "verify"]])
def test_steps_that_need_torch_fail_before_writing_without_it(tmp_path, flags):
    """One line naming what to install, and no DST: once the error came after DST was written."""
    src = make_hf_dir(tmp_path / "src")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"head_dim": 8}))
    before = tree_digest(src)
    out = run_without(tmp_path, ["torch"], src, tmp_path / "dst", "--layout", "interleaved", *flags, "--no-progress")
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and "needs torch" in err and "pip install" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shim", "spec.json", "src"]
    assert tree_digest(src) == before


def test_safetensors_conversion_without_torch(tmp_path):
    src = make_hf_dir(tmp_path / "src")
    out = run_without(tmp_path, ["torch", "numpy", "tqdm"], src, tmp_path / "dst", "--layout", "interleaved")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "dst" / "model.safetensors.index.json").is_file()
