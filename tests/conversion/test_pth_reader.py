"""The .pth reader (formats/torch_zip.py + pth_file.py) against torch.load(weights_only=True) on
the same bytes: what torch refuses, ropekit refuses with one RopeCheckpointError naming the file;
what torch reads, ropekit reads bit for bit (or refuses with its reason); and no file is ever
handed to a reader that can crash the process."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ropekit.conversion.formats.pth_file import PthFile
from ropekit.conversion.formats.torch_zip import read_layout
from ropekit.errors import RopeCheckpointError

from pth_crafting import bits, rezip, torch_reads

ROOT = Path(__file__).resolve().parents[2]


def ropekit_reads(path):
    f = PthFile(path)
    return {n: f.tensor(n) for n in f.names()}


def assert_same(got, want):
    assert list(got) == list(want)
    for k in want:
        assert bits(got[k]) == bits(want[k]), k


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"a": torch.arange(5.0), "b": torch.arange(3.0) + 10}, path)
    return path


def _set_first_offset(pkl):  # BINPERSID, then the storage offset (BININT1 0) -> BININT -1
    i = pkl.index(b"Q")
    return pkl[: i + 1] + b"J\xff\xff\xff\xff" + pkl[i + 3 :]


# (records edited / dropped) -> torch.load refuses the result; ropekit must refuse it too
REFUSED = {
    "negative storage offset": dict(edit={"data.pkl": _set_first_offset}),
    "shape larger than its storage": dict(edit={"data.pkl": lambda d: d.replace(b"K\x05\x85", b"K\x09\x85", 1)}),
    "negative stride": dict(edit={"data.pkl": lambda d: d.replace(b"K\x01\x85", b"J\xff\xff\xff\xff\x85", 1)}),
    "DoubleStorage over float32 bytes": dict(
        edit={"data.pkl": lambda d: d.replace(b"FloatStorage", b"DoubleStorage", 1)}
    ),
    "storage size not the record's": dict(
        edit={"data.pkl": lambda d: d.replace(b"cpuq\x06K\x05t", b"cpuq\x06K\x04t", 1)}
    ),
    "missing storage record": dict(drop=("data/1",)),
    "missing version record": dict(drop=("version",)),
    "version torch does not read": dict(edit={"version": lambda d: b"11\n"}),
    "version not a number": dict(edit={"version": lambda d: b"x"}),
    "a global that is not a tensor's": dict(
        edit={"data.pkl": lambda d: d.replace(b"collections\nOrderedDict", b"builtins\nexec\n\n\n\n\n\n", 1)}
    ),
    "truncated pickle": dict(edit={"data.pkl": lambda d: d[: len(d) // 2]}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refuses_what_torch_refuses(tmp_path, saved, case):
    path = tmp_path / "bad.pth"
    rezip(saved, path, **REFUSED[case])
    if case == "storage size not the record's":
        assert b"cpuq\x06K\x04t" in zipfile.ZipFile(path).read("ok/data.pkl"), "the edit did not apply"
    assert torch_reads(path) is None, f"torch reads {case!r}: not a refusal case"
    with pytest.raises(RopeCheckpointError, match="bad.pth") as exc:
        ropekit_reads(path)
    assert len(str(exc.value)) < 600 and "\n" not in str(exc.value)


def test_big_endian_byteorder_is_refused_without_crashing(tmp_path, saved):
    """torch byte-swaps such files; a meta-device load of one crashed the process (SIGSEGV).  Ropekit
    refuses it with the reason, in a subprocess here so that a crash would show as one."""
    path = tmp_path / "big.pth"
    rezip(saved, path, edit={"byteorder": lambda d: b"big"})
    code = (
        "from ropekit.conversion.formats.pth_file import PthFile\n"
        "from ropekit.errors import RopeCheckpointError\n"
        f"try:\n    PthFile({str(path)!r})\nexcept RopeCheckpointError as e:\n    print('REFUSED', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(os.environ.get("ROPEKIT_SRC", str(ROOT / "src")))),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, (out.returncode, out.stderr[-500:])
    assert out.stdout.startswith("REFUSED") and "byteorder" in out.stdout and "little-endian" in out.stdout


def test_rezipped_without_padding_reads_what_torch_reads(tmp_path):
    """Payloads found at their local headers' true offsets, not where torch's padding would put them;
    Parameters and float8 (pickled with _rebuild_tensor_v3) included."""
    sd = {
        "a": torch.nn.Parameter(torch.randn(7)),
        "b": torch.randn(3, 5).bfloat16(),
        "f8": torch.randn(6).to(torch.float8_e4m3fn),
        "u16": torch.arange(9).to(torch.uint16),
    }
    torch.save(sd, tmp_path / "ref.pth")
    rezip(tmp_path / "ref.pth", tmp_path / "nopad.pth")
    want = torch_reads(tmp_path / "nopad.pth")
    assert want is not None
    assert_same(ropekit_reads(tmp_path / "nopad.pth"), want)


def test_deflate_records_read_as_torch_reads_them(tmp_path, saved):
    """torch.load reads DEFLATE records (its memory-mapped load does not: it returns the compressed
    bytes); ropekit decompresses them and never hands out their byte range for a verbatim copy."""
    path = tmp_path / "deflate.pth"
    rezip(saved, path, compress=zipfile.ZIP_DEFLATED)
    want = torch_reads(path)
    assert want is not None
    assert_same(ropekit_reads(path), want)
    assert PthFile(path).byte_range("a") is None


def test_files_torch_refuses_and_files_ropekit_does_not_read(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"a": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    torch.save({"a": {"nested": torch.ones(2)}}, tmp_path / "nested.pth")
    torch.save({"a": torch.ones(2), "n": 3}, tmp_path / "mixed.pth")
    torch.save({"a": torch.ones(2, dtype=torch.complex128)}, tmp_path / "c128.pth")
    why = {
        "empty.pth": "empty",
        "legacy.pth": "legacy (non-zip) torch.save format",
        "junk.pth": "not a zip",
        "nested.pth": "not a tensor",
        "mixed.pth": "not a tensor",
        "c128.pth": "ComplexDoubleStorage",
    }
    for name, needle in why.items():
        with pytest.raises(RopeCheckpointError, match=re.escape(needle)):
            PthFile(tmp_path / name)


def torch_offsets(path):
    """Where torch puts each contiguous tensor's bytes (a meta-device load of a torch.save file)."""
    out = {}
    for name, t in torch.load(path, map_location="meta", weights_only=True).items():
        if t.is_contiguous():
            start = t.untyped_storage()._checkpoint_offset + t.storage_offset() * t.element_size()
            out[name] = (start, start + t.numel() * t.element_size())
    return out


def test_layout_matches_torch_load(tmp_path):
    base = torch.randn(6, 8)
    sd = {
        "bf16": torch.randn(5, 3).bfloat16(),
        "f16": torch.randn(7).half(),
        "f64": torch.randn(2, 2).double(),
        "i8": torch.arange(-4, 4, dtype=torch.int8),
        "bool": torch.tensor([True, False]),
        "i64": torch.arange(3),
        "u64": torch.arange(3).to(torch.uint64),
        "c64": torch.randn(3, dtype=torch.complex64),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "view_rows": base[2:5],
        "view_t": base.t(),
        "base": base,
    }
    path = tmp_path / "sd.pth"
    torch.save(sd, path)
    got, meta, ranges = read_layout(path), torch.load(path, map_location="meta", weights_only=True), torch_offsets(path)
    assert list(got) == list(meta)
    for name, t in meta.items():
        r = got[name]
        assert (r.dtype, r.shape, r.stride, r.is_contiguous()) == (
            t.dtype,
            tuple(t.shape),
            t.stride(),
            t.is_contiguous(),
        )
        if t.is_contiguous():
            assert (r.start, r.end) == ranges[name], name
    assert_same(ropekit_reads(path), torch_reads(path))  # views included, rebuilt from their storage


def test_model_state_dict_with_metadata_reads(tmp_path):
    """A real module's state_dict (an OrderedDict carrying _metadata, restored with BUILD) reads."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    torch.save(model.state_dict(), tmp_path / "m.pth")
    assert_same(ropekit_reads(tmp_path / "m.pth"), torch_reads(tmp_path / "m.pth"))


def _grow_first_dim(pkl):
    """The first tensor's first dim + 1 (its storage stays the size it was)."""
    i = pkl.index(b"tQK\x00(K") + 6  # after BINPERSID and storage offset 0: MARK, BININT1 <dim 0>
    return pkl[:i] + bytes([pkl[i] + 1]) + pkl[i + 1 :]


def convert_in_subprocess(*args):
    """``ropekit convert`` in its own process (a crash shows as a signal exit, not a dead suite)."""
    code = "import sys; from ropekit.cli import main; sys.exit(main(['convert', *sys.argv[1:], '--no-progress']))"
    env = dict(os.environ, PYTHONPATH=os.environ.get("ROPEKIT_SRC", str(ROOT / "src")))
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "case",
    [
        "big-endian byteorder",
        "DoubleStorage over float32 bytes",
        "missing storage record",
        "shape larger than its storage",
    ],
)
def test_convert_refuses_a_damaged_meta_checkpoint(tmp_path, case):
    """Meta -> HF on a consolidated.00.pth that torch would refuse (or byte-swap): exit 2, one line
    naming the file, no DST -- not a crash, not a converted checkpoint with wrong bytes."""
    import ropekit.conversion.driver as rkconvert

    from checkpoints import hf_tensors, make_hf_dir, quiet

    src = make_hf_dir(tmp_path / "hf", hf_tensors(torch.float32))
    rkconvert.convert(src, tmp_path / "meta", **quiet(to="meta"))
    pth = tmp_path / "meta" / "consolidated.00.pth"
    ok = tmp_path / "ok.pth"
    pth.rename(ok)
    edits = {
        "big-endian byteorder": dict(edit={"byteorder": lambda d: b"big"}),
        "DoubleStorage over float32 bytes": dict(
            edit={"data.pkl": lambda d: d.replace(b"FloatStorage", b"DoubleStorage", 1)}
        ),
        "missing storage record": dict(drop=("data/3",)),
        "shape larger than its storage": dict(edit={"data.pkl": _grow_first_dim}),
    }
    rezip(ok, pth, **edits[case])
    assert torch_reads(pth) is None or case == "big-endian byteorder"
    out = convert_in_subprocess(tmp_path / "meta", tmp_path / "dst", "--to", "hf")
    err = out.stderr.strip()
    assert out.returncode == 2, (out.returncode, err[-800:])
    assert len(err.splitlines()) == 1 and "consolidated.00.pth" in err, err
    assert not (tmp_path / "dst").exists()
