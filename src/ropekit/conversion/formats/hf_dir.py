"""transformers model directories: ``config.json`` + ``model.safetensors`` or shards listed in
``model.safetensors.index.json``.

A directory whose q/k rows were moved to the interleaved layout says so in its config
(``"ropekit_layout": "interleaved"``): transformers would otherwise rotate it as "half" and
produce wrong logits without any error.  ``ropekit.hf.patch`` reads the same key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...dialects.reading import LAYOUT_KEY, read_json_file  # one home: the config readers
from ...errors import RopeCheckpointError
from ..source import check_member
from . import dtypes
from .base import Checkpoint, Geometry, list_aux
from .safetensors_io import SafetensorsFile, SafetensorsWriter

__all__ = ["HFCheckpoint", "is_hf_dir", "write_hf", "LAYOUT_KEY", "INDEX", "SINGLE"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
#: shard size when ropekit chooses the sharding (Meta -> HF), as transformers' save_pretrained default
MAX_SHARD_BYTES = 5 * 1024**3


def is_hf_dir(path: Path) -> bool:
    return (
        path.is_dir() and (path / "config.json").is_file() and ((path / INDEX).is_file() or (path / SINGLE).is_file())
    )


def read_json(path: Path) -> dict:
    return read_json_file(path, error=RopeCheckpointError)  # the project's one JSON reader


class HFCheckpoint(Checkpoint):
    fmt = "hf"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config = read_json(self.path / "config.json")
        self.geometry = Geometry.from_hf_config(self.config, str(self.path / "config.json"))
        self.layout = self.check_layout(self.config.get(LAYOUT_KEY, "half"))
        self.index = None
        if (self.path / INDEX).is_file():
            self.index = read_json(self.path / INDEX)
            weight_map = self.index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise RopeCheckpointError(f"{self.path / INDEX} has no weight_map")
            files = list(dict.fromkeys(weight_map.values()))
            for shard in files:  # a name like ../x or /x must not make convert read (or overwrite) it
                check_member(self.path, shard, f"{INDEX} weight_map")
                if not (self.path / shard).is_file():
                    tensor = next(n for n, s in weight_map.items() if s == shard)
                    raise RopeCheckpointError(
                        f"shard {shard} named in {INDEX} (e.g. for tensor {tensor}) is missing from {self.path}"
                    )
        else:
            files, weight_map = [SINGLE], None
        self.files = {f: SafetensorsFile(self.path / f) for f in files}
        self.shards = [(f, sf.names()) for f, sf in self.files.items()]
        self._where = {n: f for f, names in self.shards for n in names}
        if weight_map is not None:
            for name, shard in weight_map.items():
                if self._where.get(name) != shard:
                    raise RopeCheckpointError(
                        f"tensor {name} is listed in {INDEX} under {shard} but that file does not hold it"
                    )
            extra = set(self._where) - set(weight_map)
            if extra:
                raise RopeCheckpointError(
                    f"tensor {sorted(extra)[0]} is stored in {self._where[sorted(extra)[0]]} but not listed in {INDEX}"
                )
        skip = set(files) | {"config.json", INDEX}
        self.aux_files = list_aux(self.path, skip)
        self.metadata = {f: sf.metadata for f, sf in self.files.items()}

    def info(self, name):
        i = self.files[self._where[name]].infos[name]
        return i.dtype, i.shape

    def raw_info(self, name):
        i = self.files[self._where[name]].infos[name]
        return i.dtype_name, i.shape

    def tensor(self, name):
        return self.files[self._where[name]].tensor(name)

    def byte_range(self, name):
        f = self.files[self._where[name]]
        i = f.infos[name]
        return f.path, i.start, i.end


def hf_config_with_layout(config: dict, layout: str) -> dict:
    config = dict(config)
    if layout == "half":
        config.pop(LAYOUT_KEY, None)
    else:
        config[LAYOUT_KEY] = layout
    return config


def write_json(path: Path, data: dict) -> None:
    # transformers' own formatting (save_pretrained): indent 2, sorted keys, trailing newline
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_hf(
    dst: Path,
    shards,
    config: dict,
    metadata: dict,
    index_extra: dict | None,
    config_bytes: bytes | None,
    aligns: dict | None = None,
    clones: dict | None = None,
    open_writer=SafetensorsWriter,
):
    """Open one streaming writer per shard.  ``shards``: [(file, [(name, dtype, shape), ...])].
    Returns {file: writer}; the config and index are written immediately (small).
    ``aligns``: {file: data-start residue} for ``SafetensorsWriter(align=...)``; ``clones``: {file:
    source SafetensorsFile} for ``SafetensorsWriter(clone=...)``; ``open_writer``: the writer class
    (called like ``SafetensorsWriter``)."""
    os.makedirs(dst, exist_ok=True)
    for f, _ in shards:  # shard names come from the source's index: never a path out of dst
        if not f or os.path.basename(f) != f or f in (".", ".."):
            raise RopeCheckpointError(f"shard name {f!r} is not a plain file name")
    if config_bytes is not None:  # unchanged config: keep the user's bytes exactly
        (dst / "config.json").write_bytes(config_bytes)
    else:
        write_json(dst / "config.json", config)
    writers = {}
    for f, entries in shards:
        writers[f] = open_writer(
            dst / f, entries, metadata.get(f) or {"format": "pt"}, (aligns or {}).get(f), (clones or {}).get(f)
        )
    if len(shards) > 1 or index_extra is not None:
        index = dict(index_extra or {})
        index["metadata"] = dict(index.get("metadata") or {})
        index["metadata"]["total_size"] = sum(w.total_size for w in writers.values())
        index["weight_map"] = {name: f for f, entries in shards for name, _, _ in entries}
        write_json(dst / INDEX, index)
    return writers


def plan_shards(entries, max_bytes: int = MAX_SHARD_BYTES):
    """Split [(name, dtype, shape)] into transformers-named shards of at most max_bytes each."""
    groups, current, size = [], [], 0
    for name, dtype, shape in entries:
        nbytes = dtypes.nbytes(dtype, shape)
        if current and size + nbytes > max_bytes:
            groups.append(current)
            current, size = [], 0
        current.append((name, dtype, shape))
        size += nbytes
    groups.append(current)
    if len(groups) == 1:
        return [(SINGLE, groups[0])]
    n = len(groups)
    return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]
