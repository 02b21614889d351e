"""The `ropekit` command as a whole: help, --version, unknown commands, a closed output pipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import ropekit
from ropekit.cli import COMMANDS, main

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

SRC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src")


def _env():
    return {**os.environ, "PYTHONPATH": os.path.abspath(SRC)}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_unknown_command_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no-such-command" in err and len(err.strip().splitlines()) == 1


def test_closed_output_pipe_stops_quietly():
    # `ropekit spec --catalog | head -0`: the reader is gone before the first write.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ropekit", "spec", "--catalog"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err, err


def test_version_prints_the_package_version():
    # the entry point as users run it; __version__ is the one home of the version (pyproject reads it)
    proc = subprocess.run(
        [sys.executable, "-m", "ropekit", "--version"], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ropekit {ropekit.__version__}\n"
    assert re.fullmatch(r"ropekit \d+\.\d+\.\d+\n", proc.stdout)


def test_pyproject_reads_the_version_from_the_package():
    with open(os.path.join(SRC, os.pardir, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ropekit.__version__"}
