"""``ropekit bench`` argument handling (the benchmark itself is run by hand: speed is never
asserted in tests)."""

import pytest

from ropekit.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--shapes", "S=7"], "--shapes: 'S=7' is not one of"),
        (["bench", "--dtypes", "int8"], "--dtypes: 'int8' is not one of"),
    ],
)
def test_bench_bad_input_is_a_clear_error(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bench_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--gpu" in out and "--shapes" in out and "clone()" in out


def test_bench_threads_must_be_positive(capsys, tmp_path):
    assert main(["bench", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "--threads=0 must be >= 1" in capsys.readouterr().err


def test_bench_writes_into_a_fresh_temp_dir_not_the_current_one(monkeypatch, tmp_path, capsys):
    # the timing itself is replaced (speed is never measured in tests): only where files go
    from ropekit import bench

    row = dict(device="cpu", dtype="float32", shape="S=512", provider="clone", seconds=1e-3, ratio_to_clone=1.0)
    monkeypatch.setattr(bench, "run_cpu", lambda shapes, dtypes: [dict(row)])
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--shapes", "S=512", "--dtypes", "fp32", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # nothing in the current directory
    written = [line.split("wrote ", 1)[1] for line in out.splitlines() if line.startswith("wrote ")]
    assert written and all(p.endswith(".csv") and not p.startswith(str(tmp_path)) for p in written)
    import os

    assert all(os.path.exists(p) for p in written)
    assert "results go to" in out


def test_bench_out_is_honoured(monkeypatch, tmp_path, capsys):
    from ropekit import bench

    row = dict(device="cpu", dtype="float32", shape="S=512", provider="clone", seconds=1e-3, ratio_to_clone=1.0)
    monkeypatch.setattr(bench, "run_cpu", lambda shapes, dtypes: [dict(row)])
    assert main(["bench", "--shapes", "S=512", "--dtypes", "fp32", "--no-plot", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "speed_cpu.csv").exists()
