"""The torch-free conversion path (formats/raw.py): q/k rows moved as bytes must give exactly the
bytes torch's index_select gives (ropekit.permute, itself checked against transformers' GGUF
loader), for every role and dtype; whole-shard clones must equal the tensor-by-tensor writer; and
`ropekit convert` between safetensors checkpoints must not import torch at all."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

import ropekit.conversion.driver as rkconvert
from ropekit.conversion.formats import dtypes, raw
from ropekit.conversion.formats.base import Geometry
from ropekit.conversion.stream import Writers
from ropekit.errors import RopeShapeError
from ropekit.permute import permute_neox_qkv, permute_phi3_qkv, permute_qk

from checkpoints import KV, D, H, files_of, hf_tensors, make_hf_dir, quiet, read_all, same_bytes
from pth_crafting import load_both_ways

ROOT = Path(__file__).resolve().parents[2]
LAYOUT_PAIRS = [("half", "interleaved"), ("interleaved", "half"), ("half", "half")]


# ---------------------------------------------------------------------------------------------
# row orders against ropekit.permute (torch index_select)
# ---------------------------------------------------------------------------------------------


def torch_rows(role, g, src, dst, rows):
    """The row order ropekit.permute applies, read off by permuting the row numbers themselves."""
    idx = torch.arange(rows, dtype=torch.float64)
    if role in ("q", "k"):
        out = permute_qk(idx, g.heads_for(role), g.head_dim, g.rotary_dim, src, dst)
    elif role == "qkv_neox":
        out = permute_neox_qkv(idx, g.n_heads, g.head_dim, g.rotary_dim, src, dst)
    else:
        out = permute_phi3_qkv(idx, g.n_heads, g.n_kv_heads, g.head_dim, g.rotary_dim, src, dst)
    return [int(v) for v in out.tolist()]


@given(
    kv=st.integers(1, 4),
    group=st.integers(1, 3),
    half_head=st.integers(1, 8),
    rot_frac=st.integers(1, 4),
    role=st.sampled_from(["q", "k", "qkv_neox", "qkv_concat"]),
    pair=st.sampled_from(LAYOUT_PAIRS),
)
def test_row_order_matches_permute_module(kv, group, half_head, rot_frac, role, pair):
    head_dim = 2 * half_head
    rotary_dim = max(2, (head_dim * rot_frac // 4) // 2 * 2)  # partial rotary included
    g = Geometry(n_heads=kv * group, n_kv_heads=kv, head_dim=head_dim, rotary_dim=rotary_dim)
    rows = {"q": g.n_heads, "k": g.n_kv_heads, "qkv_neox": 3 * g.n_heads, "qkv_concat": g.n_heads + 2 * kv}[
        role
    ] * head_dim
    order = raw.row_order(role, g, *pair, rows)
    assert order == torch_rows(role, g, *pair, rows)
    assert sorted(order) == list(range(rows))


def test_row_order_rejects_wrong_row_count():
    g = Geometry(n_heads=4, n_kv_heads=2, head_dim=8, rotary_dim=8)
    with pytest.raises(RopeShapeError, match="16 rows but n_heads \\* head_dim = 4 \\* 8"):
        raw.row_order("q", g, "half", "interleaved", 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int8])
@pytest.mark.parametrize("shape", [(4 * 8, 24), (4 * 8,), (4 * 8, 3)])  # weight, bias, LoRA B of rank 3
def test_read_rows_equals_index_select(tmp_path, dtype, shape):
    t = (torch.randn(shape) * 50).to(dtype)
    path = tmp_path / "t.bin"
    prefix = b"x" * 13  # the tensor starts at an odd offset, as in a real file
    path.write_bytes(prefix + bytes(t.contiguous().view(-1).view(torch.uint8).numpy()))
    g = Geometry(n_heads=4, n_kv_heads=4, head_dim=8, rotary_dim=4)
    for src, dst in LAYOUT_PAIRS:
        want = permute_qk(t, 4, 8, 4, src, dst)
        order = raw.row_order("q", g, src, dst, shape[0])
        fd = os.open(path, os.O_RDONLY)
        try:
            got = raw.read_rows(fd, len(prefix), len(prefix) + t.numel() * t.element_size(), order)
            reader = raw.RowReader()
            for _ in range(2):  # the second read reuses the first one's buffer
                handle, again = reader.read(
                    fd, len(prefix), len(prefix) + t.numel() * t.element_size(), "q", lambda: order
                )
                assert bytes(again) == bytes(got)
                reader.release(handle)
        finally:
            os.close(fd)
        assert bytes(got) == bytes(want.contiguous().view(-1).view(torch.uint8).numpy()), (src, dst)


def test_read_rows_survives_short_reads(tmp_path, monkeypatch):
    data = bytes(range(256)) * 8  # 64 rows of 32 bytes
    path = tmp_path / "t.bin"
    path.write_bytes(data)
    order = list(range(63, -1, -1))
    real = os.preadv

    def short(fd, bufs, pos):  # at most 45 bytes per call: splits rows mid-way
        left, cut = 45, []
        for b in bufs:
            if left <= 0:
                break
            cut.append(b[: min(left, b.nbytes)])
            left -= cut[-1].nbytes
        return real(fd, cut, pos)

    monkeypatch.setattr(raw.os, "preadv", short)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = raw.read_rows(fd, 0, len(data), order)
    finally:
        os.close(fd)
    assert bytes(got) == b"".join(data[32 * r : 32 * (r + 1)] for r in order)


def test_dtype_table_agrees_with_torch():
    from ropekit.conversion.formats.dtypes import SIZES

    for name in SIZES:
        dtype = getattr(torch, dtypes.torch_name(name))
        assert dtypes.itemsize(name) == torch.empty((), dtype=dtype).element_size()
        assert dtypes.dtype_name(dtype) == name and dtypes.torch_dtype(name) is dtype


# ---------------------------------------------------------------------------------------------
# end to end: bytes path == torch path, file for file
# ---------------------------------------------------------------------------------------------


def convert_both(monkeypatch, src, tmp_path, **kw):
    outs = []
    for flag in (True, False):
        dst = tmp_path / f"out-{'raw' if flag else 'torch'}{src.suffix}"
        rep = rkconvert.convert(src, dst, writers=Writers(permute_bytes=flag), **quiet(**kw))
        outs.append((dst, rep))
    return outs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("partial", [False, True])
def test_hf_layout_change_bytes_equal_torch_path(tmp_path, monkeypatch, dtype, partial):
    over = {"partial_rotary_factor": 0.5} if partial else {}
    src = make_hf_dir(tmp_path / "src", hf_tensors(dtype, bias=True), **over)
    (a, rep_a), (b, rep_b) = convert_both(monkeypatch, src, tmp_path, layout="interleaved")
    assert rep_a.permuted == rep_b.permuted == 8  # q/k weights and biases of 2 layers
    fa, fb = files_of(a), files_of(b)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb.get(k)]
    # and against an independent reading: the safetensors library + ropekit.permute
    got, orig = read_all(a), read_all(src)
    rot = D // 2 if partial else D
    for name, t in orig.items():
        if ".q_proj." in name or ".k_proj." in name:
            t = permute_qk(t, H if ".q_proj." in name else KV, D, rot, "half", "interleaved")
        assert same_bytes(got[name], t), name
    # shards whose tensors all stay in place keep the source's header bytes exactly (whole-file copy)
    for shard in sorted(src.glob("*.safetensors")):
        n = 8 + int.from_bytes(shard.read_bytes()[:8], "little")
        assert (a / shard.name).read_bytes()[:n] == shard.read_bytes()[:n]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_inv_freq_drop_and_state_dict_bytes_equal_torch_path(tmp_path, monkeypatch, dtype):
    """Headers that change (a dropped tensor; a single file) go through the tensor-by-tensor writer."""
    tensors = hf_tensors(dtype)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(D // 2)
    src = make_hf_dir(tmp_path / "src", tensors)
    (a, ra), (b, rb) = convert_both(monkeypatch, src, tmp_path, layout="interleaved", inv_freq="drop")
    assert ra.dropped == rb.dropped == 1
    assert files_of(a) == files_of(b)

    sd = tmp_path / "sd.safetensors"
    save_file(hf_tensors(dtype, seed=3, bias=True), sd)  # no metadata: the writer adds {"format": "pt"}
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"num_attention_heads": H, "num_key_value_heads": KV, "hidden_size": H * D}))
    (a, ra), (b, rb) = convert_both(monkeypatch, sd, tmp_path, layout="interleaved", config=cfg)
    assert ra.permuted == 8 and a.read_bytes() == b.read_bytes()
    got = read_all(a)
    for name, t in read_all(sd).items():
        if ".q_proj." in name or ".k_proj." in name:
            t = permute_qk(t, H if ".q_proj." in name else KV, D, D, "half", "interleaved")
        assert same_bytes(got[name], t), name


def test_hf_to_meta_bytes_equal_torch_path(tmp_path, monkeypatch):
    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.bfloat16))
    (a, _), (b, _) = convert_both(monkeypatch, src, tmp_path, to="meta")
    pa = torch.load(a / "consolidated.00.pth", weights_only=True)
    pb = torch.load(b / "consolidated.00.pth", weights_only=True)
    assert pa.keys() == pb.keys() and all(same_bytes(pa[k], pb[k]) for k in pa)


# ---------------------------------------------------------------------------------------------
# no torch on the safetensors path
# ---------------------------------------------------------------------------------------------

PROBE = """
import runpy, sys
sys.argv = ["ropekit", "convert"] + sys.argv[1:]
try:
    runpy.run_module("ropekit", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(code, sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m in ("numpy", "safetensors")))
"""


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    code, mods = out.stdout.strip().split(" ", 1)
    return int(code), mods, out.stderr


def test_cli_safetensors_paths_do_not_import_torch(tmp_path):
    tensors = hf_tensors(torch.bfloat16, bias=True)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(D // 2)
    src = make_hf_dir(tmp_path / "src", tensors)
    sd = tmp_path / "sd.safetensors"
    save_file(hf_tensors(torch.float16, seed=1), sd, metadata={"format": "pt"})
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"num_attention_heads": H, "num_key_value_heads": KV, "hidden_size": H * D}))
    for args in [
        (src, tmp_path / "a", "--layout", "interleaved"),
        (src, tmp_path / "b", "--layout", "interleaved", "--inv-freq", "drop"),
        (tmp_path / "a", tmp_path / "c", "--layout", "half", "--dry-run"),
        (sd, tmp_path / "d.safetensors", "--layout", "interleaved", "--config", cfg),
    ]:
        code, mods, err = run_cli(*args)
        assert code == 0 and mods == "[]", (args, mods, err)
    assert (tmp_path / "c").exists() is False and (tmp_path / "d.safetensors").is_file()
    # the probe can see torch: paths that need numbers import it
    code, mods, err = run_cli(src, tmp_path / "e", "--layout", "interleaved", "--inv-freq", "add")
    assert code == 0 and "'torch'" in mods, (mods, err)


def test_cli_meta_to_hf_does_not_import_torch(tmp_path):
    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.bfloat16))
    rkconvert.convert(src, tmp_path / "meta", **quiet(to="meta"))
    code, mods, err = run_cli(tmp_path / "meta", tmp_path / "back", "--to", "hf")
    assert code == 0 and mods == "[]", (mods, err)
    back, orig = read_all(tmp_path / "back"), read_all(src)
    assert back.keys() == orig.keys() and all(same_bytes(back[n], orig[n]) for n in orig)


def test_building_the_cli_parser_imports_no_torch():
    """Every command registers its options without torch, so `ropekit convert` can run without it."""
    from ropekit.bench import CPU_SHAPES
    from ropekit.cli.bench import SHAPE_NAMES

    assert SHAPE_NAMES == tuple(s.name for s in CPU_SHAPES)
    code = (
        "import sys; from ropekit.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


def test_cli_hf_to_meta_does_not_import_torch(tmp_path):
    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.bfloat16, bias=True))
    code, mods, err = run_cli(src, tmp_path / "meta", "--to", "meta")
    assert code == 0 and mods == "[]", (mods, err)
    got, orig = load_both_ways(tmp_path / "meta" / "consolidated.00.pth"), read_all(src)
    from ropekit.conversion.formats.meta_dir import hf_to_meta_name

    assert len(got) == len(orig)
    for name, t in orig.items():
        if ".q_proj." in name or ".k_proj." in name:
            t = permute_qk(t, H if ".q_proj." in name else KV, D, D, "half", "interleaved")
        assert same_bytes(got[hf_to_meta_name(name)], t), name
