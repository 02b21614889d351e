"""The torch-free conversion path (formats/raw.py): q/k rows moved as bytes must give exactly the
bytes torch's index_select gives (ropekit.permute, itself checked against transformers' GGUF
loader), for every role and dtype; whole-shard clones must equal the tensor-by-tensor writer; and
`ropekit convert` between safetensors checkpoints must not import torch at all."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

import ropekit.conversion.driver as rkconvert
from ropekit.conversion.formats import raw
from ropekit.conversion.formats.base import Geometry
from ropekit.conversion.stream import Writers
from ropekit.errors import RopeShapeError
from ropekit.permute import permute_neox_qkv, permute_phi3_qkv, permute_qk
from torch_writers import torch_pth_writer

from checkpoints import KV, D, H, hf_tensors, make_hf_dir, quiet, read_all, same_bytes

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
    from ropekit.conversion.formats.safetensors_io import DTYPES

    for name, dtype in DTYPES.items():
        assert raw.itemsize(name) == torch.empty((), dtype=dtype).element_size()
        assert raw.dtype_name(dtype) == name and raw.torch_dtype(name) is dtype


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


def files_of(path: Path) -> dict:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


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


# ---------------------------------------------------------------------------------------------
# torch.save layouts read without torch (formats/torch_zip.py) against torch.load(meta)
# ---------------------------------------------------------------------------------------------


def test_torch_zip_layout_matches_torch_load(tmp_path):
    from ropekit.conversion.formats.pth_file import _byte_ranges
    from ropekit.conversion.formats.torch_zip import read_layout

    base = torch.randn(6, 8)
    sd = {
        "bf16": torch.randn(5, 3).bfloat16(),
        "f16": torch.randn(7).half(),
        "f64": torch.randn(2, 2).double(),
        "i8": torch.arange(-4, 4, dtype=torch.int8),
        "bool": torch.tensor([True, False]),
        "i64": torch.arange(3),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "view_rows": base[2:5],
        "view_t": base.t(),
        "base": base,
    }
    path = tmp_path / "sd.pth"
    torch.save(sd, path)
    got = read_layout(path)
    meta = torch.load(path, map_location="meta", weights_only=True)
    ranges = _byte_ranges(meta, path)
    assert list(got) == list(meta)
    for name, t in meta.items():
        r = got[name]
        assert (r.dtype, r.shape, r.stride, r.is_contiguous()) == (
            t.dtype,
            tuple(t.shape),
            t.stride(),
            t.is_contiguous(),
        ), name
        if t.is_contiguous():
            assert (r.start, r.end) == ranges[name], name
            data = path.read_bytes()[r.start : r.end]
            assert data == bytes(sd[name].contiguous().view(-1).view(torch.uint8).numpy()), name


def test_torch_zip_refuses_what_it_does_not_know(tmp_path):
    from ropekit.conversion.formats.torch_zip import read_layout

    torch.save({"a": {"nested": torch.ones(2)}}, tmp_path / "nested.pt")
    torch.save({"a": torch.ones(2), "n": 3}, tmp_path / "mixed.pt")
    torch.save({"a": torch.nn.Parameter(torch.ones(2))}, tmp_path / "param.pt")
    torch.save({"a": torch.ones(2).to(torch.float8_e4m3fn)}, tmp_path / "f8.pt")  # pickled with _rebuild_tensor_v3
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    for f in ("nested.pt", "mixed.pt", "param.pt", "f8.pt", "junk.pt"):
        assert read_layout(tmp_path / f) is None, f
    # such files are still read, by torch.load (weights only)
    from ropekit.conversion.formats.pth_file import PthFile

    assert PthFile(tmp_path / "f8.pt").info("a") == (torch.float8_e4m3fn, (2,))
    assert PthFile(tmp_path / "param.pt").tensor("a").tolist() == [1.0, 1.0]


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
    code = "import sys; from ropekit.cli import build_parser; build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


# ---------------------------------------------------------------------------------------------
# torch.save files written without torch (formats/torch_zip.py: PthZipWriter)
# ---------------------------------------------------------------------------------------------


def load_both_ways(path):
    """torch.load weights-only, plain and memory-mapped: the two must agree."""
    plain = torch.load(path, weights_only=True)
    mapped = torch.load(path, weights_only=True, mmap=True)
    assert list(plain) == list(mapped) and all(same_bytes(plain[k], mapped[k]) for k in plain)
    return plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pth_writer_equals_torch_save_path(tmp_path, monkeypatch, dtype):
    """hf -> meta with the byte writer and with torch.save: the same tensors, one storage each."""
    from ropekit.conversion.formats.torch_zip import read_layout

    src = make_hf_dir(tmp_path / "src", hf_tensors(dtype, bias=True))
    outs = {}
    for flag in (True, False):
        # the torch.save reference writer in place of the torch-free one
        writers = Writers() if flag else Writers(pth=torch_pth_writer)
        dst = tmp_path / f"meta-{flag}"
        rkconvert.convert(src, dst, writers=writers, **quiet(to="meta"))
        outs[flag] = dst / "consolidated.00.pth"
    a, b = load_both_ways(outs[True]), load_both_ways(outs[False])
    assert list(a) == list(b) and all(a[k].dtype == b[k].dtype == dtype and same_bytes(a[k], b[k]) for k in a)
    for path in outs.values():  # no tensor shares a storage with another, in either file
        keys = [r.key for r in read_layout(path).values()]
        assert len(set(keys)) == len(keys)
    # the converter's file is a valid zip, CRCs included: zipfile-based .pth readers check them
    # even where torch does not (the torch.save reference writer, test-only, leaves them unset)
    with zipfile.ZipFile(outs[True]) as z:
        assert z.testzip() is None
    # and against an independent reading: the safetensors library + ropekit.permute
    orig = read_all(src)
    from ropekit.conversion.formats.meta_dir import hf_to_meta_name

    for name, t in orig.items():
        if ".q_proj." in name or ".k_proj." in name:
            t = permute_qk(t, H if ".q_proj." in name else KV, D, D, "half", "interleaved")
        assert same_bytes(a[hf_to_meta_name(name)], t), name


def test_fast_crc32_is_zlibs():
    """The fast extra's CRC-32 (zlib-ng) is the one in use, and it is zlib's, chunked or not."""
    import random
    import zlib

    from zlib_ng import zlib_ng

    from ropekit.conversion.formats.torch_zip import crc32

    assert crc32() is zlib_ng.crc32
    rng = random.Random(0)
    for size in [0, 1, 7, 4095, 65537, (1 << 20) + 3]:
        data = rng.randbytes(size)
        assert crc32()(data) == zlib.crc32(data)
        assert crc32()(data[size // 3 :], crc32()(data[: size // 3])) == zlib.crc32(data)


def test_pth_writer_without_the_fast_crc(tmp_path, monkeypatch):
    """With only CPython's zlib (no fast extra) the .pth is the same file."""
    import zlib

    from ropekit.conversion.formats import torch_zip

    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.bfloat16))
    rkconvert.convert(src, tmp_path / "fast", **quiet(to="meta"))
    monkeypatch.setattr(torch_zip, "crc32", lambda: zlib.crc32)
    rkconvert.convert(src, tmp_path / "plain", **quiet(to="meta"))
    assert (tmp_path / "fast" / "consolidated.00.pth").read_bytes() == (
        tmp_path / "plain" / "consolidated.00.pth"
    ).read_bytes()
    with zipfile.ZipFile(tmp_path / "plain" / "consolidated.00.pth") as z:
        assert z.testzip() is None


@pytest.mark.parametrize("to", ["hf", "meta"])
def test_full_disk_is_found_before_writing(tmp_path, monkeypatch, capsys, to):
    """Output files are reserved whole first: no space -> exit 2, one line naming the file, nothing left."""
    import errno

    from ropekit.cli import main
    from ropekit.conversion.formats import safetensors_io

    src = make_hf_dir(tmp_path / "src")
    monkeypatch.setattr(safetensors_io, "_fallocate", lambda: (lambda fd, mode, at, size: -1, lambda: errno.ENOSPC))
    args = ["--layout", "interleaved"] if to == "hf" else ["--to", "meta"]
    assert main(["convert", str(src), str(tmp_path / "dst"), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reserve" in err and "No space left on device" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_preallocation_is_only_a_speed_up(tmp_path, monkeypatch):
    """A file system without fallocate (EOPNOTSUPP) gives the same files; real fallocate reserves the size."""
    import errno

    from ropekit.conversion.formats import safetensors_io

    src = make_hf_dir(tmp_path / "src")
    for to in ("hf", "meta"):
        rkconvert.convert(src, tmp_path / f"{to}-a", **quiet(to=to, layout="interleaved"))
    monkeypatch.setattr(safetensors_io, "_fallocate", lambda: (lambda fd, mode, at, size: -1, lambda: errno.EOPNOTSUPP))
    for to in ("hf", "meta"):
        rkconvert.convert(src, tmp_path / f"{to}-b", **quiet(to=to, layout="interleaved"))
        a, b = files_of(tmp_path / f"{to}-a"), files_of(tmp_path / f"{to}-b")
        assert len(a) > 2 and a == b
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    monkeypatch.undo()
    safetensors_io.preallocate(fd, 1 << 20)
    st = os.fstat(fd)
    os.close(fd)
    assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 1 << 20  # blocks really reserved (ext4, tmpfs, xfs)


def test_pth_payloads_keep_the_sources_in_page_offset(tmp_path):
    """Copied tensors start at their source's offset mod 4096 (when that is a multiple of 8: the
    alignment every dtype needs), all others on a page, so the kernel copies at full speed."""
    from ropekit.conversion.formats.meta_dir import hf_to_meta_name
    from ropekit.conversion.formats.safetensors_io import SafetensorsFile
    from ropekit.conversion.formats.torch_zip import read_layout

    tensors = hf_tensors(torch.bfloat16, bias=True)
    tensors["model.layers.0.input_layernorm.weight"] = torch.ones(
        3, dtype=torch.bfloat16
    )  # 6 bytes: shifts the rest off 8
    src = make_hf_dir(tmp_path / "src", tensors)
    rkconvert.convert(src, tmp_path / "meta", **quiet(to="meta"))
    layout = read_layout(tmp_path / "meta" / "consolidated.00.pth")
    checked = {"source": 0, "moved": 0, "unaligned": 0}
    for shard in sorted(src.glob("*.safetensors")):
        for name, info in SafetensorsFile(shard).infos.items():
            rec = layout[hf_to_meta_name(name)]
            moved = ".q_proj." in name or ".k_proj." in name
            if not moved and info.start % 8 == 0:
                assert rec.start % 4096 == info.start % 4096, name
                checked["source"] += 1
            else:
                assert rec.start % 4096 == 0, name
                checked["moved" if moved else "unaligned"] += 1
    assert all(checked.values()), checked  # every case was seen


def test_state_dict_pickle_equals_torch_saves(tmp_path):
    """The hand-written pickle unpickles (restricted, as torch_zip reads) to what torch.save's does,
    and uses protocol-2 opcodes only."""
    import io
    import pickletools
    import zipfile

    from ropekit.conversion.formats import torch_zip

    sd = {
        "a": torch.randn(3, 5),
        "b.bf16": torch.randn(300, 2).bfloat16(),
        "c": torch.randn(2, 2, 2).half(),
        "scalar": torch.tensor(2.0),
        "empty": torch.zeros(0, 4),
        "big": torch.zeros(70000, dtype=torch.int8),
        "i64": torch.arange(3),
        "bool": torch.tensor([True, False]),
    }
    torch.save(sd, tmp_path / "ref.pth")
    with zipfile.ZipFile(tmp_path / "ref.pth") as z:
        ref = torch_zip._Unpickler(io.BytesIO(z.read("ref/data.pkl"))).load()
    mine = torch_zip.state_dict_pickle([(k, raw.dtype_name(v.dtype), tuple(v.shape)) for k, v in sd.items()])
    assert torch_zip._Unpickler(io.BytesIO(mine)).load() == ref
    assert max(op.proto for op, _, _ in pickletools.genops(mine)) <= 2


def test_pth_zip_writer_many_tensors_and_zip64(tmp_path, monkeypatch):
    """More than 1000 tensors (SETITEMS batches) and zip64 records (forced: real files need 4 GiB)
    load with torch.load, plain and memory-mapped, and with Python's zipfile."""
    import zipfile

    from ropekit.conversion.formats import torch_zip

    sd = {
        f"t{i}": torch.full((i % 7 + 1,), float(i), dtype=torch.float32 if i % 2 else torch.bfloat16)
        for i in range(1003)
    }
    for z64 in (False, True):
        if z64:
            monkeypatch.setattr(torch_zip, "_ZIP64_AT", 0)
        path = tmp_path / f"z{z64}.pth"
        w = torch_zip.PthZipWriter(path, [(k, v.dtype, v.shape) for k, v in sd.items()], align={"t1": 8, "t2": 3})
        for k, v in sd.items():
            w.write_tensor(k, v)
        w.close()
        got = load_both_ways(path)
        assert list(got) == list(sd) and all(same_bytes(got[k], sd[k]) for k in sd)
        layout = torch_zip.read_layout(path)
        assert layout["t1"].start % 4096 == 8 and layout["t2"].start % 4096 == 0  # 3 is no dtype's alignment
        with zipfile.ZipFile(path) as z:
            assert z.read(f"z{z64}/version") == b"3\n" and z.read(f"z{z64}/byteorder") == b"little"
            assert (z.infolist()[2].extra[:2] == b"\x01\x00") is z64  # the zip64 field comes first


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
