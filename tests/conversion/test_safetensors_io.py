"""The safetensors reader against the safetensors library on the same bytes: whatever the library
refuses, ropekit refuses with one RopeCheckpointError naming the file; whatever it accepts, ropekit
reads as the same tensors (or refuses, where the header is ambiguous)."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ropekit.conversion.formats.dtypes import SIZES, torch_dtype
from ropekit.conversion.formats.safetensors_io import SafetensorsFile
from ropekit.errors import RopeCheckpointError

U8 = '"dtype":"U8","shape":[2],"data_offsets":[0,2]'


def file_of(header, data=b"ab"):
    """Header (``@`` stands for a valid 2-byte U8 entry) + data, as a safetensors file's bytes."""
    raw = header.encode() if isinstance(header, str) else header
    raw = raw.replace(b"@", U8.encode())
    return struct.pack("<Q", len(raw)) + raw + data


def reference(path):
    """{name: tensor} as the safetensors library reads the file, or None when it refuses it."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        return None


def ropekit(path):
    f = SafetensorsFile(path)
    return {n: f.tensor(n) for n in f.names()}


def same(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and a[k].view(-1).view(torch.uint8).equal(b[k].view(-1).view(torch.uint8))
        for k in a
    )


# every case: bytes the safetensors library refuses (checked) -- ropekit must refuse them too
REFUSED = {
    "overlapping offsets": file_of('{"a":{@},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', b"abc"),
    "a hole between tensors": file_of(
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}',
        b"abc",
    ),
    "a hole at the start": file_of('{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', b"xab"),
    "trailing bytes": file_of('{"a":{@}}', b"abX"),
    "offsets past the file": file_of('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"ab"),
    "size != shape x dtype": file_of('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,2]}}'),
    "end before begin": file_of('{"a":{"dtype":"U8","shape":[0],"data_offsets":[2,0]}}'),
    "non-string metadata value": file_of('{"__metadata__":{"k":1},"a":{@}}'),
    "boolean metadata value": file_of('{"__metadata__":{"k":true},"a":{@}}'),
    "non-dict metadata": file_of('{"__metadata__":["x"],"a":{@}}'),
    "negative dim": file_of('{"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}'),
    "minus zero dim": file_of('{"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}', b""),
    "float dim": file_of('{"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}'),
    "exponent dim": file_of('{"a":{"dtype":"U8","shape":[2e0],"data_offsets":[0,2]}}'),
    "bool dim": file_of('{"a":{"dtype":"U8","shape":[true, true],"data_offsets":[0,1]}}', b"a"),
    "negative offset": file_of('{"a":{"dtype":"U8","shape":[0],"data_offsets":[-1,-1]}}', b""),
    "offset over 64 bits": file_of('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,18446744073709551618]}}'),
    "three offsets": file_of('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2,2]}}'),
    "unknown dtype": file_of('{"a":{"dtype":"u8","shape":[2],"data_offsets":[0,2]}}'),
    "missing shape": file_of('{"a":{"dtype":"U8","data_offsets":[0,2]}}'),
    "null shape": file_of('{"a":{"dtype":"U8","shape":null,"data_offsets":[0,2]}}'),
    "entry not an object": file_of('{"a":3}'),
    "a field twice": file_of('{"a":{"dtype":"U8","dtype":"I8","shape":[2],"data_offsets":[0,2]}}'),
    "NaN in the header": file_of('{"__metadata__":{"k":NaN},"a":{@}}'),
    "lone surrogate escape": file_of('{"\\ud800":{@}}'),
    "control character in a name": file_of('{"a\tb":{@}}'),
    "NUL padding after the JSON": file_of(b'{"a":{@}}' + b"\0"),
    "UTF-8 byte-order mark": file_of("\ufeff" + '{"a":{@}}'),
    "invalid UTF-8": file_of(b'{"\xff":{' + U8.encode() + b"}}"),
    "header not an object": file_of("[]", b""),
    "header size past the file": struct.pack("<Q", 100) + b"{}",
    "header size absurd": struct.pack("<Q", 2**63) + b"{}",
    "header size over 100 MB": struct.pack("<Q", 100_000_001) + b"{}",
    "shorter than 8 bytes": b"abc",
    "empty file": b"",
    "deeply nested extra field": file_of('{"a":{@,"x":' + "[" * 200 + "]" * 200 + "}}"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refuses_what_the_reference_refuses(tmp_path, case):
    path = tmp_path / "x.safetensors"
    path.write_bytes(REFUSED[case])
    assert reference(path) is None, f"the safetensors library reads {case!r}: not a refusal case"
    with pytest.raises(RopeCheckpointError, match="corrupt safetensors header in .*x.safetensors") as exc:
        ropekit(path)
    assert len(str(exc.value)) < 400


# bytes the library accepts: ropekit reads the same tensors, or refuses with a reason where the
# header means two things (a name given twice) or holds a dtype ropekit does not convert
ACCEPTED = {
    "zero tensors": (file_of("{}", b""), True),
    "null metadata": (file_of('{"__metadata__":null,"a":{@}}'), True),
    "extra field in an entry": (file_of('{"a":{@,"zz":[1.5, null]}}'), True),
    "spaces around the JSON": (file_of(' {"a":{@}}   '), True),
    "empty name": (file_of('{"":{@}}'), True),
    "zero-sized tensor sharing an offset": (
        file_of('{"z":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{@}}'),
        True,
    ),
    "entries out of data order": (
        file_of(
            '{"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
        ),
        True,
    ),
    "a name twice": (file_of('{"a":{@},"a":{@}}'), False),
    "a metadata key twice": (file_of('{"__metadata__":{"k":"1","k":"2"},"a":{@}}'), False),
    "a dtype ropekit does not convert": (file_of('{"a":{"dtype":"F8_E8M0","shape":[2],"data_offsets":[0,2]}}'), False),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_reads_what_the_reference_reads(tmp_path, case):
    data, ropekit_reads = ACCEPTED[case]
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    want = reference(path)
    assert want is not None, f"the safetensors library refuses {case!r}"
    if ropekit_reads:
        assert same(ropekit(path), want)
    else:
        with pytest.raises(RopeCheckpointError, match="x.safetensors"):
            ropekit(path)


def test_every_dtype_reads_as_the_library_reads(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        name: torch.randint(0, 256, (3, 5), dtype=torch.uint8, generator=g)
        .view(-1)[: 15 - 15 % SIZES[name]]
        .view(torch_dtype(name))
        for name in SIZES
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    got = ropekit(path)
    assert same(got, reference(path)) and same(got, tensors)
    assert SafetensorsFile(path).metadata == {"format": "pt"}


def test_header_reads_no_more_than_the_file(tmp_path):
    """A header length near 100 MB in a small file is refused from its 8 bytes, not read."""
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 99_999_999) + json.dumps({}).encode())
    with pytest.raises(RopeCheckpointError, match="does not fit in the file"):
        SafetensorsFile(path)


@pytest.mark.parametrize("case", ["overlapping offsets", "trailing bytes", "non-string metadata value", "negative dim"])
def test_convert_refuses_a_shard_the_reference_refuses(tmp_path, capsys, case):
    """A transformers directory whose shard the safetensors library refuses: exit 2, one line
    naming the shard, no DST (the converter used to convert such files and exit 0)."""
    from ropekit.cli import main

    from checkpoints import make_hf_dir

    src = make_hf_dir(tmp_path / "src", n_shards=1)
    shard = src / "model-00001-of-00001.safetensors"
    good = SafetensorsFile(shard)
    names = good.names()
    # keep the shard's tensors, but give it the damaged header of the case (rebuilt around its own data)
    header = json.loads(shard.read_bytes()[8 : good.data_start])
    if case == "overlapping offsets":
        header[names[1]]["data_offsets"] = [o - 2 for o in header[names[1]]["data_offsets"]]
    elif case == "non-string metadata value":
        header["__metadata__"] = {"format": 1}
    elif case == "negative dim":
        header[names[0]]["shape"] = [-s for s in header[names[0]]["shape"]]
    raw = json.dumps(header).encode()
    data = shard.read_bytes()[good.data_start :] + (b"X" if case == "trailing bytes" else b"")
    shard.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    assert reference(shard) is None
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "dst"), "--layout", "interleaved", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and shard.name in err, err
    assert not (tmp_path / "dst").exists()
