"""A plain state dict in one file (``.safetensors``, or ``.pt``/``.pth``/``.bin`` loaded with
``weights_only=True``), plus what the file cannot say by itself: the head layout (from a
config.json / params.json given alongside) and the layout its q/k rows are in.
"""

from __future__ import annotations

from pathlib import Path

from .base import Checkpoint, Geometry
from .safetensors_io import SafetensorsFile

__all__ = ["StateDictCheckpoint", "is_state_dict_file", "TORCH_SUFFIXES"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def is_state_dict_file(path: Path) -> bool:
    return path.is_file() and (path.suffix == ".safetensors" or path.suffix in TORCH_SUFFIXES)


def geometry_from_config(path: Path) -> tuple[dict, Geometry]:
    from .hf_dir import read_json
    from .meta_dir import geometry_from_params

    cfg = read_json(path)
    if "n_heads" in cfg:  # Meta params.json
        return cfg, geometry_from_params(cfg, str(path))
    return cfg, Geometry.from_hf_config(cfg, str(path))


class StateDictCheckpoint(Checkpoint):
    fmt = "state_dict"

    def __init__(self, path: Path, config_path: Path | None = None, layout: str | None = None):
        self.path = Path(path)
        self.config, self.geometry = geometry_from_config(Path(config_path)) if config_path else ({}, None)
        if self.path.suffix == ".safetensors":
            self.file = SafetensorsFile(self.path)
            self.sd = None
            names = self.file.names()
        else:
            from .pth_file import PthFile

            self.file = None
            self.sd = PthFile(self.path)
            names = self.sd.names()
        self.shards = [(self.path.name, names)]
        self.aux_files = []
        meta_style = any(".attention.wq." in n or ".attention.wk." in n for n in names)
        self.layout_guessed = layout is None
        self.layout = self.check_layout(layout or ("interleaved" if meta_style else "half"))

    def info(self, name):
        if self.file is not None:
            i = self.file.infos[name]
            return i.dtype, i.shape
        return self.sd.info(name)

    def raw_info(self, name):
        if self.file is not None:
            i = self.file.infos[name]
            return i.dtype_name, i.shape
        return self.sd.raw_info(name)

    def tensor(self, name):
        return self.file.tensor(name) if self.file is not None else self.sd.tensor(name)

    def byte_range(self, name):
        if self.file is None:
            return self.sd.byte_range(name)
        i = self.file.infos[name]
        return self.file.path, i.start, i.end
