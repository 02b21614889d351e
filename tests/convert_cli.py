"""`ropekit convert` run as a user runs it, for the conversion tests: the one-line error it prints
for bad input, and the command slowed down so that a signal lands in the middle of a run."""

from __future__ import annotations

from ropekit.cli import main


def cli_error(capsys, *argv) -> str:
    """The error line of ``ropekit convert ARGV``, which must exit 2 with exactly one line."""
    capsys.readouterr()
    assert main(["convert", *map(str, argv), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ropekit: error: "), err
    return err


def slow_cli(copy_delay: float, rmtree_delay: float | None = None) -> str:
    """Python source (for ``python -c``) that runs ``ropekit ARGV`` with every byte-range copy into a
    safetensors file delayed by ``copy_delay`` seconds, and, when ``rmtree_delay`` is given, every
    ``shutil.rmtree`` too (a clean-up long enough for a second signal to land inside it)."""
    lines = [
        "import shutil, sys, time",
        "from ropekit.conversion.formats import safetensors_io",
        "from ropekit.cli import main",
        "orig = safetensors_io.SafetensorsWriter.copy_range",
        "def slow(self, *a):",
        f"    time.sleep({copy_delay!r})",
        "    return orig(self, *a)",
        "safetensors_io.SafetensorsWriter.copy_range = slow",
    ]
    if rmtree_delay is not None:
        lines += [
            "orig_rmtree = shutil.rmtree",
            "def slow_rmtree(*a, **k):",
            f"    time.sleep({rmtree_delay!r})",
            "    return orig_rmtree(*a, **k)",
            "shutil.rmtree = slow_rmtree",
        ]
    return "\n".join([*lines, "sys.exit(main(sys.argv[1:]))", ""])
