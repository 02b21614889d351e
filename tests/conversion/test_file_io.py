"""Byte-level file I/O (formats/file_io.py): output files reserved whole before writing."""

import os

import pytest

import ropekit.conversion.driver as rkconvert

from checkpoints import files_of, make_hf_dir, quiet


@pytest.mark.parametrize("to", ["hf", "meta"])
def test_full_disk_is_found_before_writing(tmp_path, monkeypatch, capsys, to):
    """Output files are reserved whole first: no space -> exit 2, one line naming the file, nothing left."""
    import errno

    from ropekit.cli import main
    from ropekit.conversion.formats import file_io

    src = make_hf_dir(tmp_path / "src")
    monkeypatch.setattr(file_io, "_fallocate", lambda: (lambda fd, mode, at, size: -1, lambda: errno.ENOSPC))
    args = ["--layout", "interleaved"] if to == "hf" else ["--to", "meta"]
    assert main(["convert", str(src), str(tmp_path / "dst"), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reserve" in err and "No space left on device" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_preallocation_is_only_a_speed_up(tmp_path, monkeypatch):
    """A file system without fallocate (EOPNOTSUPP) gives the same files; real fallocate reserves the size."""
    import errno

    from ropekit.conversion.formats import file_io

    src = make_hf_dir(tmp_path / "src")
    for to in ("hf", "meta"):
        rkconvert.convert(src, tmp_path / f"{to}-a", **quiet(to=to, layout="interleaved"))
    monkeypatch.setattr(file_io, "_fallocate", lambda: (lambda fd, mode, at, size: -1, lambda: errno.EOPNOTSUPP))
    for to in ("hf", "meta"):
        rkconvert.convert(src, tmp_path / f"{to}-b", **quiet(to=to, layout="interleaved"))
        a, b = files_of(tmp_path / f"{to}-a"), files_of(tmp_path / f"{to}-b")
        assert len(a) > 2 and a == b
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    monkeypatch.undo()
    file_io.preallocate(fd, 1 << 20)
    st = os.fstat(fd)
    os.close(fd)
    assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 1 << 20  # blocks really reserved (ext4, tmpfs, xfs)
