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
