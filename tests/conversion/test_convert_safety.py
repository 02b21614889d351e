"""convert reads only regular files inside SRC, writes only inside DST, and never loses DST.

Every test here names a way the converter once lost or leaked data: an index pointing outside SRC,
a link or FIFO inside SRC, a replacement interrupted between two renames, a second SIGTERM that cut
the clean-up short.  Checkpoints are made with the safetensors library (tests/checkpoints.py)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import ropekit as rk
from ropekit import convert

from checkpoints import ROOT, make_hf_dir, quiet, tree_digest
from convert_cli import cli_error, slow_cli


def _point_index_at(src, target: str) -> None:
    index = src / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(set(data["weight_map"].values()))[0]
    data["weight_map"] = {n: (target if f == first else f) for n, f in data["weight_map"].items()}
    index.write_text(json.dumps(data))


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_index_naming_a_file_outside_src_is_refused_and_the_file_untouched(tmp_path, capsys, how):
    """weight_map '../src/model-00001-of-00003.safetensors' once made convert overwrite that file."""
    src = make_hf_dir(tmp_path / "src")
    victim = tmp_path / "victim"
    make_hf_dir(victim)
    target = sorted(victim.glob("*.safetensors"))[0]
    name = f"../victim/{target.name}" if how == "dotdot" else str(target)
    _point_index_at(src, name)
    before_src, before_victim = tree_digest(src), tree_digest(victim)
    err = cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert "weight_map names" in err and repr(name) in err, err
    assert tree_digest(victim) == before_victim and tree_digest(src) == before_src
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "victim"]


def test_index_naming_a_link_out_of_src_is_refused(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    outside = make_hf_dir(tmp_path / "outside")
    shard = sorted(outside.glob("*.safetensors"))[0]
    os.symlink(shard, src / ".hidden-link.safetensors")  # hidden: only the index leads to it
    _point_index_at(src, ".hidden-link.safetensors")
    before = tree_digest(outside)
    err = cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert "is a symbolic link" in err, err
    assert tree_digest(outside) == before and not (tmp_path / "dst").exists()


def test_symlink_in_src_is_refused_not_followed(tmp_path, capsys):
    """SRC/notes.txt -> a file outside SRC was once copied into DST as a regular file."""
    src = make_hf_dir(tmp_path / "src")
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the model")
    os.symlink(secret, src / "notes.txt")
    err = cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert "notes.txt is a symbolic link" in err and str(secret) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt", "src"]


def test_symlink_loop_and_linked_directory_in_src_are_refused(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    os.symlink("loop", src / "loop")
    assert "loop is a symbolic link" in cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    os.unlink(src / "loop")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big.bin").write_bytes(b"x" * 10)
    os.symlink(tmp_path / "elsewhere", src / "extra")
    assert "extra is a symbolic link" in cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst*"))


def _run_cli_in_subprocess(*argv, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "ropekit", "convert", *map(str, argv), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_fifo_or_socket_in_src_is_refused_without_blocking(tmp_path, kind):
    """A FIFO among the aux files once blocked convert forever (open waits for a writer)."""
    src = make_hf_dir(tmp_path / "src")
    if kind == "fifo":
        os.mkfifo(src / "pipe")
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(src / "pipe"))
    try:
        out = _run_cli_in_subprocess(src, tmp_path / "dst", "--layout", "interleaved", timeout=60)
    finally:
        if kind == "socket":
            s.close()
    assert out.returncode == 2, out.stderr
    assert (
        len(out.stderr.strip().splitlines()) == 1
        and f"pipe is a {'FIFO' if kind == 'fifo' else 'socket'}" in out.stderr
    )
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst*"))


# ---------------------------------------------------------------------------------------------
# replacing DST: never no DST, nothing hidden left behind
# ---------------------------------------------------------------------------------------------

_KILL_BETWEEN_RENAMES = """
import os, signal, sys
from ropekit.conversion import install
install.exchange = lambda a, b: False  # a file system without RENAME_EXCHANGE: the two-step path
real = os.rename
def rename(a, b, **kw):
    real(a, b, **kw)
    if ".ropekit-old-" in os.fspath(b):  # DST moved aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename
from ropekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_between_the_two_renames_is_recovered_by_the_next_run(tmp_path):
    """Where the file system cannot swap names, a SIGKILL between moving the old DST aside and
    moving the new one in leaves the old one as a hidden sibling; the next run puts it back
    before doing anything else (before: it stayed hidden forever and DST was gone)."""
    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "dst", **quiet())
    old = tree_digest(tmp_path / "dst")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    argv = ["convert", str(src), str(tmp_path / "dst"), "--layout", "interleaved", "--force", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_RENAMES, *argv], env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.glob(".dst.ropekit-old-*")]  # the old DST waits there
    # the next run for the same DST restores it first: without force it then refuses to replace it
    with pytest.raises(rk.RopeCheckpointError, match="exists; pass force=True"):
        convert(src, tmp_path / "dst", layout="interleaved", **quiet())
    assert tree_digest(tmp_path / "dst") == old and not list(tmp_path.glob(".dst.ropekit-*"))
    convert(src, tmp_path / "dst", layout="interleaved", force=True, **quiet())
    assert not list(tmp_path.glob(".dst.ropekit-*")) and (tmp_path / "dst" / "config.json").is_file()
    assert tree_digest(tmp_path / "dst") != old  # ... and then the new conversion replaced it


def test_force_replacement_swaps_in_one_step(tmp_path, monkeypatch):
    """With RENAME_EXCHANGE, DST is the old or the new output at every instant: the swap is one
    system call, and the old output is removed only after it."""
    from ropekit.conversion import install

    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "dst", **quiet())
    seen = []
    real = install.exchange

    def spy(a, b):
        ok = real(a, b)
        seen.append((ok, (b / "config.json").is_file(), "ropekit_layout" in (b / "config.json").read_text()))
        return ok

    monkeypatch.setattr(install, "exchange", spy)
    monkeypatch.setattr(os, "rename", lambda *a, **k: pytest.fail("a two-step rename where exchange works"))
    convert(src, tmp_path / "dst", layout="interleaved", force=True, **quiet())
    assert seen == [(True, True, True)]  # right after the swap DST is the complete new output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_file_dst_replaced_without_exchange_is_one_rename(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from ropekit.conversion import install

    from checkpoints import hf_tensors

    sd = tmp_path / "sd.safetensors"
    save_file(hf_tensors(), sd)
    (tmp_path / "out.safetensors").write_bytes(b"old")
    monkeypatch.setattr(install, "exchange", lambda a, b: False)
    convert(sd, tmp_path / "out.safetensors", force=True, **quiet())
    assert (tmp_path / "out.safetensors").read_bytes() == sd.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "sd.safetensors"]


@pytest.mark.parametrize("trial", range(3))
def test_two_sigterms_5ms_apart_leave_nothing_behind(tmp_path, trial):
    """The second SIGTERM once landed inside the clean-up of the first and left a hidden partial."""
    src = make_hf_dir(tmp_path / "src")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    argv = ["convert", str(src), str(tmp_path / "dst"), "--layout", "interleaved", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", slow_cli(copy_delay=0.02, rmtree_delay=0.05), *argv], env=env, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while not any(any(p.glob("*.safetensors")) for p in tmp_path.glob(".dst.ropekit-partial-*")):
        assert proc.poll() is None and time.time() < deadline, "conversion ended before it could be interrupted"
        time.sleep(0.002)
    time.sleep(0.01 * trial)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert rc == 130, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"], list(tmp_path.iterdir())


def test_stale_partial_and_old_siblings_of_dead_writers_are_cleaned(tmp_path):
    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "dst", **quiet())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".dst.ropekit-partial-{pid}").mkdir()
    (tmp_path / f".dst.ropekit-partial-{pid}" / "x").write_text("half")
    (tmp_path / f".dst.ropekit-old-{pid}").mkdir()
    live = tmp_path / f".dst.ropekit-partial-{os.getppid()}"  # a running writer's: left alone
    live.mkdir()
    convert(src, tmp_path / "dst", layout="interleaved", force=True, **quiet())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dst", "src", live.name])


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "ENAMETOOLONG", "EDQUOT"])
def test_os_errors_while_writing_are_one_line_and_leave_nothing(tmp_path, capsys, monkeypatch, errno_name):
    """A full disk on an aux file, no inodes, a read-only file system, a name too long: one line."""
    import errno
    import shutil

    src = make_hf_dir(tmp_path / "src")
    code = getattr(errno, errno_name)

    def fail(*a, **k):
        raise OSError(code, os.strerror(code), str(a[1]))

    monkeypatch.setattr(shutil, "copyfile", fail)  # the aux files (tokenizer.json) go through copyfile
    err = cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert os.strerror(code) in err and "tokenizer.json" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_dst_name_too_long_is_one_line(tmp_path, capsys):
    src = make_hf_dir(tmp_path / "src")
    err = cli_error(capsys, src, tmp_path / ("d" * 240), "--layout", "interleaved")
    assert "File name too long" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_signal_during_a_deferred_section_is_delivered_after_it():
    """Renames and clean-ups run with SIGINT / SIGTERM held back, then re-raised: a second Ctrl-C
    cannot cut a clean-up short, and the signal is not lost either."""
    from ropekit.conversion.install import deferred_signals

    got = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append("handled"))
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # without the deferral the handler runs here
            got.append("section done")
        time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert got == ["section done", "handled"]
