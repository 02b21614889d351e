"""Fault injection: a conversion fails at every write, rename, copy and writer call in turn (an
exception in-process; SIGTERM / SIGKILL in a subprocess at a few of them), and after each: SRC is
unchanged, DST is the old output or the complete new one, and the next run leaves no hidden
sibling.  The default run samples the call numbers (a few dozen cases, a few seconds);
``ROPEKIT_FUZZ=long`` tries every one."""

import os
import signal

import pytest

import ropekit

from checkpoints import make_hf_dir
from faults import Faults, content_digest, run_in_process, run_killed

LONG = os.environ.get("ROPEKIT_FUZZ") == "long"


def _sample(n: int) -> list[int]:
    return list(range(1, n + 1)) if LONG else sorted({1 + (i * (n - 1)) // 9 for i in range(10)})


def test_the_counter_sees_every_kind_of_point(tmp_path):
    """The fuzz is only as good as its points: a layout change over an existing DST passes through
    writer calls, kernel copies, positional writes and the atomic swap."""
    from ropekit import convert

    src = make_hf_dir(tmp_path / "src")
    convert(src, tmp_path / "dst", progress=False, log=lambda s: None)
    with Faults() as f:
        convert(src, tmp_path / "dst", layout="interleaved", force=True, progress=False, log=lambda s: None)
    kinds = set(f.calls)
    assert {"os.mkdir", "os.pwrite", "shutil.copyfile", "install.exchange"} <= kinds, kinds
    assert {"safetensors_io.SafetensorsWriter.write_bytes", "safetensors_io.SafetensorsWriter.close"} <= kinds, kinds
    assert len(f.calls) > 20


def test_an_injected_fault_is_really_raised(tmp_path):
    from ropekit import convert

    src = make_hf_dir(tmp_path / "src")
    with pytest.raises(RuntimeError, match="os.mkdir"), Faults(1):
        convert(src, tmp_path / "dst", layout="interleaved", progress=False, log=lambda s: None)
    assert content_digest(tmp_path / "dst") is None


def test_exceptions_at_every_point_lose_nothing(tmp_path):
    out = run_in_process(tmp_path, make_hf_dir, _sample)
    c = out.counts
    assert c["attempts"] >= 32
    assert c["raw_tracebacks"] == c["silent_wrong"] == c["data_lost"] == c["left_behind"] == 0, out.failures
    assert c["clear_errors"] + 3 >= c["attempts"]  # a fault after the last point may let the run finish


@pytest.mark.parametrize("two_step", [False, True])
def test_signals_at_a_few_points_lose_nothing(tmp_path, two_step):
    """With RENAME_EXCHANGE no kill ever leaves no DST; without it (two renames) a SIGKILL between
    them leaves the old DST aside, and the next run puts it back before anything else."""
    ks = (5, 15, 25, 40, 60, 80, "os.rename:1") if LONG else ()
    ks += ("os.rename:2",) if two_step else ("install.exchange:1",)  # inside the install
    cases = [(s, k) for s in (signal.SIGTERM, signal.SIGKILL) for k in ks]
    root = os.path.dirname(os.path.dirname(ropekit.__file__))
    out = run_killed(tmp_path, make_hf_dir, root, cases, two_step=two_step)
    c = out.counts
    assert c["attempts"] == len(cases)
    if not two_step:  # one swap: never a moment without DST
        assert c["restored_by_next_run"] == 0, out.failures
    else:  # a SIGKILL between the two renames: the old DST is found back by the next run
        assert c["restored_by_next_run"] >= 1, out.failures
    assert c["raw_tracebacks"] == c["crashes"] == c["silent_wrong"] == c["data_lost"] == c["left_behind"] == 0, (
        out.failures
    )
