"""README.md runs as written: every fenced code block is executed, so the front door cannot rot.

- ```python blocks run in a fresh namespace, in a scratch directory holding the files they name
  (``path/to/model``: a tiny random transformers Llama saved by this test, no download);
- ```bash blocks run line by line through the checkout's CLI (``python -m ropekit ...``) in such a
  directory; a line may name its exit code in its comment ("exit code 1"), otherwise 0 is expected.
  The only lines not run are the two set-up commands (they build ``.venv`` and run this very
  suite); the test checks that they are exactly the ones ``.ci/run`` runs;
- ```text blocks are output samples and are the only ones skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_models

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SETUP_COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/ropekit doctor",
    "bash scripts/setup.sh && .venv/bin/python -m pytest -n 2",
)
RUN_FENCES = {"python", "bash"}
SKIPPED_FENCES = {"text"}
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EXIT_CODE = re.compile(r"exit code (\d+)")


def readme_blocks() -> list[tuple[str, str, int]]:
    """(fence info string, body, line number of the opening fence) for every fenced block."""
    text = README.read_text(encoding="utf-8")
    return [(m["info"].strip(), m["body"], text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def blocks_of(info: str):
    return [pytest.param(body, id=f"README.md:{line}") for kind, body, line in readme_blocks() if kind == info]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A transformers Llama small enough to save, load and run in a second (random weights)."""
    pytest.importorskip("transformers")
    return tiny_models.saved(tmp_path_factory.mktemp("readme-model") / "model")


@pytest.fixture
def workspace(tmp_path, tiny_model, monkeypatch) -> Path:
    """A fresh directory holding every file the README names."""
    shutil.copytree(tiny_model, tmp_path / "path" / "to" / "model")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_code_and_every_block_has_a_known_fence():
    kinds = [kind for kind, _, _ in readme_blocks()]
    assert "python" in kinds and "bash" in kinds
    unknown = sorted(set(kinds) - RUN_FENCES - SKIPPED_FENCES)
    assert not unknown, f"README.md fences {unknown}: use python or bash (run here) or text (an output sample)"


def test_setup_commands_are_in_readme_and_ci_runs_the_test_command():
    bash = "\n".join(body for kind, body, _ in readme_blocks() if kind == "bash").splitlines()
    for command in SETUP_COMMANDS:
        assert command in bash, f"README.md lost its set-up command: {command}"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert SETUP_COMMANDS[1] in ci


@pytest.mark.parametrize("code", blocks_of("python"))
def test_python_block_runs_as_written(code, workspace):
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def cli_lines(body: str) -> list[tuple[list[str], int]]:
    """The block's commands as (ropekit arguments, expected exit code), set-up commands left out."""
    commands = []
    for line in body.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or line.strip() in SETUP_COMMANDS:
            continue
        words = shlex.split(line, comments=True)
        assert words[0] == "ropekit", f"README.md bash blocks run ropekit commands only: {line!r}"
        code = EXIT_CODE.search(line.partition("#")[2])
        commands.append((words[1:], int(code[1]) if code else 0))
    return commands


@pytest.mark.parametrize("body", blocks_of("bash"))
def test_bash_block_runs_through_the_cli(body, workspace):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for args, expected in cli_lines(body):
        proc = subprocess.run(
            [sys.executable, "-m", "ropekit", *args],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        shown = f"ropekit {shlex.join(args)} -> {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert proc.returncode == expected, shown
        assert "Traceback" not in proc.stderr, shown


def test_cli_lines_reads_exit_codes_and_refuses_other_commands():
    # the reader above must be able to fail: a shell command is refused, an exit code is read
    assert cli_lines("ropekit doctor a b   # differ: exit code 1\n# a comment\n") == [(["doctor", "a", "b"], 1)]
    assert cli_lines(SETUP_COMMANDS[0]) == []
    with pytest.raises(AssertionError, match="ropekit commands only"):
        cli_lines("rm -rf build")
