"""Where the older transformers releases of the release matrix live: ``.deps/transformers-<v>``,
installed by scripts/setup.sh (which .ci/run calls first), one ``--target`` directory each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def release_dir(version: str) -> Path:
    """The directory holding transformers ``version``; a test needing it fails under CI when it is
    missing (setup.sh always installs it there) and is skipped elsewhere, with the fix named."""
    path = ROOT / ".deps" / f"transformers-{version}"
    if not (path / "transformers" / "__init__.py").is_file():
        why = f"transformers {version} is not installed at {path} (bash scripts/setup.sh puts it there)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path
