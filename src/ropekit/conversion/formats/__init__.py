"""Checkpoint formats ropekit reads and writes, one module each:

- ``hf``: transformers directories (config.json + safetensors, sharded or not)
- ``meta``: Meta Llama directories (params.json + consolidated.NN.pth, interleaved)
- ``state_dict``: one state-dict file (.safetensors / .pt / .pth / .bin) plus an optional config

``open_checkpoint`` picks the right one from what is on disk.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import RopeCheckpointError
from .base import Checkpoint, Geometry, role_of

__all__ = ["open_checkpoint", "detect_format", "Checkpoint", "Geometry", "role_of", "FORMATS"]

FORMATS = ("hf", "meta", "state_dict")


def detect_format(path) -> str:
    """``"hf"``, ``"meta"`` or ``"state_dict"`` for what is at ``path``, or a RopeCheckpointError
    that lists what was looked for."""
    from .hf_dir import is_hf_dir
    from .meta_dir import is_meta_dir
    from .state_dict import is_state_dict_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if is_hf_dir(path):
        return "hf"
    if is_meta_dir(path):
        return "meta"
    if is_state_dict_file(path):
        return "state_dict"
    raise RopeCheckpointError(
        f"unknown checkpoint format at {path}: expected a transformers directory (config.json + "
        f"model.safetensors[.index.json]), a Meta directory (params.json + consolidated.NN.pth), or a "
        f"state-dict file (.safetensors, .pt, .pth, .bin)"
    )


def open_checkpoint(path, *, config=None, layout: str | None = None) -> Checkpoint:
    """Open a checkpoint for streaming.  ``config`` and ``layout`` only matter for state-dict
    files, which carry neither head counts nor their q/k layout."""
    fmt = detect_format(path)
    if fmt == "hf":
        from .hf_dir import HFCheckpoint

        ckpt = HFCheckpoint(Path(path))
    elif fmt == "meta":
        from .meta_dir import MetaCheckpoint

        ckpt = MetaCheckpoint(Path(path))
    else:
        from .state_dict import StateDictCheckpoint

        return StateDictCheckpoint(Path(path), config, layout)
    if layout is not None and Checkpoint.check_layout(layout) != ckpt.layout:
        raise RopeCheckpointError(
            f"{path} is a {fmt} checkpoint in layout {ckpt.layout!r}; src_layout={layout!r} contradicts it"
        )
    return ckpt
