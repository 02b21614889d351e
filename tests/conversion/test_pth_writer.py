"""The torch-free .pth writer (formats/pth_writer.py) against torch: what it writes loads with
torch.load(weights_only=True), plain and memory-mapped, as the same tensors torch.save's file
holds, for every dtype it accepts; and the converter's .pth equals the torch.save reference's."""

import math
import zipfile

import pytest
import torch

import ropekit.conversion.driver as rkconvert
from ropekit.conversion.formats import zip_layout
from ropekit.conversion.formats.dtypes import SIZES, dtype_name, torch_dtype
from ropekit.conversion.formats.meta_dir import hf_to_meta_name
from ropekit.conversion.formats.pth_pickle import load_state_dict_pickle, state_dict_pickle
from ropekit.conversion.formats.pth_writer import PthZipWriter
from ropekit.conversion.formats.safetensors_io import SafetensorsFile
from ropekit.conversion.formats.torch_zip import read_layout
from ropekit.conversion.stream import Writers
from ropekit.permute import permute_qk

from checkpoints import KV, D, H, hf_tensors, make_hf_dir, quiet, read_all, same_bytes
from pth_crafting import bits, load_both_ways
from torch_writers import torch_pth_writer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pth_writer_equals_torch_save_path(tmp_path, monkeypatch, dtype):
    """hf -> meta with the byte writer and with torch.save: the same tensors, one storage each."""
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

    for name, t in orig.items():
        if ".q_proj." in name or ".k_proj." in name:
            t = permute_qk(t, H if ".q_proj." in name else KV, D, D, "half", "interleaved")
        assert same_bytes(a[hf_to_meta_name(name)], t), name


def test_fast_crc32_is_zlibs():
    """The fast extra's CRC-32 (zlib-ng) is the one in use, and it is zlib's, chunked or not."""
    import random
    import zlib

    from zlib_ng import zlib_ng

    from ropekit.conversion.formats.zip_layout import crc32

    assert crc32() is zlib_ng.crc32
    rng = random.Random(0)
    for size in [0, 1, 7, 4095, 65537, (1 << 20) + 3]:
        data = rng.randbytes(size)
        assert crc32()(data) == zlib.crc32(data)
        assert crc32()(data[size // 3 :], crc32()(data[: size // 3])) == zlib.crc32(data)


def test_pth_writer_without_the_fast_crc(tmp_path, monkeypatch):
    """With only CPython's zlib (no fast extra) the .pth is the same file."""
    import zlib

    from ropekit.conversion.formats import pth_writer, zip_layout

    src = make_hf_dir(tmp_path / "src", hf_tensors(torch.bfloat16))
    rkconvert.convert(src, tmp_path / "fast", **quiet(to="meta"))
    monkeypatch.setattr(zip_layout, "crc32", lambda: zlib.crc32)
    monkeypatch.setattr(pth_writer, "crc32", lambda: zlib.crc32)
    rkconvert.convert(src, tmp_path / "plain", **quiet(to="meta"))
    assert (tmp_path / "fast" / "consolidated.00.pth").read_bytes() == (
        tmp_path / "plain" / "consolidated.00.pth"
    ).read_bytes()
    with zipfile.ZipFile(tmp_path / "plain" / "consolidated.00.pth") as z:
        assert z.testzip() is None


def test_pth_payloads_keep_the_sources_in_page_offset(tmp_path):
    """Copied tensors start at their source's offset mod 4096 (when that is a multiple of 8: the
    alignment every dtype needs), all others on a page, so the kernel copies at full speed."""
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
    import pickletools

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
        ref = load_state_dict_pickle(z.read("ref/data.pkl"))
    mine = state_dict_pickle([(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in sd.items()])
    assert load_state_dict_pickle(mine) == ref
    assert max(op.proto for op, _, _ in pickletools.genops(mine)) <= 2


def test_pth_zip_writer_many_tensors_and_zip64(tmp_path, monkeypatch):
    """More than 1000 tensors (SETITEMS batches) and zip64 records (forced: real files need 4 GiB)
    load with torch.load, plain and memory-mapped, and with Python's zipfile."""
    sd = {
        f"t{i}": torch.full((i % 7 + 1,), float(i), dtype=torch.float32 if i % 2 else torch.bfloat16)
        for i in range(1003)
    }
    for z64 in (False, True):
        if z64:
            monkeypatch.setattr(zip_layout, "ZIP64_AT", 0)
        path = tmp_path / f"z{z64}.pth"
        w = PthZipWriter(path, [(k, v.dtype, v.shape) for k, v in sd.items()], align={"t1": 8, "t2": 3})
        for k, v in sd.items():
            w.write_tensor(k, v)
        w.close()
        got = load_both_ways(path)
        assert list(got) == list(sd) and all(same_bytes(got[k], sd[k]) for k in sd)
        layout = read_layout(path)
        assert layout["t1"].start % 4096 == 8 and layout["t2"].start % 4096 == 0  # 3 is no dtype's alignment
        with zipfile.ZipFile(path) as z:
            assert z.read(f"z{z64}/version") == b"3\n" and z.read(f"z{z64}/byteorder") == b"little"
            assert (z.infolist()[2].extra[:2] == b"\x01\x00") is z64  # the zip64 field comes first


# ---------------------------------------------------------------------------------------------
# writer x dtype: every dtype each torch-free writer accepts, read back by the reference readers
# ---------------------------------------------------------------------------------------------

ALL_DTYPES = sorted(SIZES)


def random_tensor(name, shape, seed):
    """Arbitrary bit patterns of dtype ``name`` (NaNs, denormals, every byte value)."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape) * SIZES[name]
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).view(torch_dtype(name)).view(shape)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_pth_writer_dtype_matrix_loads_in_torch(tmp_path, dtype):
    """Each dtype through PthZipWriter, loaded by torch.load(weights_only=True) plain and mmap:
    bit-identical (float8 and uint16/32/64 need _rebuild_tensor_v3 over an UntypedStorage: there is
    no torch.Float8_e4m3fnStorage), and the pickle is what torch.save writes for the same tensors."""
    sd = {"w": random_tensor(dtype, (3, 4), 1), "b": random_tensor(dtype, (5,), 2), "s": random_tensor(dtype, (), 3)}
    path = tmp_path / "w.pth"
    w = PthZipWriter(path, [(k, v.dtype, v.shape) for k, v in sd.items()])
    for k, v in sd.items():
        w.write_tensor(k, v)
    w.close()
    got = load_both_ways(path)
    assert list(got) == list(sd) and all(bits(got[k]) == bits(sd[k]) for k in sd)
    torch.save(sd, tmp_path / "ref.pth")
    with zipfile.ZipFile(tmp_path / "ref.pth") as z:
        assert load_state_dict_pickle(z.read("ref/data.pkl")) == load_state_dict_pickle(
            zipfile.ZipFile(path).read("w/data.pkl")
        )


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_safetensors_writer_dtype_matrix_loads_in_safetensors(tmp_path, dtype):
    """Each dtype through SafetensorsWriter, read by safetensors.safe_open: bit-identical, and the
    file is byte for byte what safetensors.torch.save_file writes (same header, same data)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ropekit.conversion.formats.safetensors_io import SafetensorsWriter

    sd = {"b": random_tensor(dtype, (5,), 2), "s": random_tensor(dtype, (), 3), "w": random_tensor(dtype, (3, 4), 1)}
    path = tmp_path / "w.safetensors"
    w = SafetensorsWriter(path, [(k, v.dtype, v.shape) for k, v in sd.items()])
    for k, v in sd.items():
        w.write_tensor(k, v)
    w.close()
    with safe_open(str(path), "pt") as f:
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert sorted(got) == sorted(sd) and all(bits(got[k]) == bits(sd[k]) for k in sd)
    save_file(sd, tmp_path / "ref.safetensors")
    assert path.read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_writers_refuse_dtypes_they_cannot_store(tmp_path):
    from ropekit.conversion.formats.safetensors_io import SafetensorsWriter
    from ropekit.errors import RopeCheckpointError

    for make in (PthZipWriter, SafetensorsWriter):
        with pytest.raises(RopeCheckpointError, match="complex128"):
            make(tmp_path / "x", [("a", torch.complex128, (2,))])
        assert not (tmp_path / "x").exists()
