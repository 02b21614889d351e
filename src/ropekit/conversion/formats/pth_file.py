"""One ``torch.save`` file opened for streaming: its layout read and checked without torch and
without running code (``torch_zip``), its tensors read one at a time.

Nothing here hands a file to ``torch.load``: a file the reader refuses is refused with its
reason (``torch.load`` on the meta device crashes the process on some of them, e.g. a big-endian
byteorder record).

>>> import os, tempfile, torch
>>> p = os.path.join(tempfile.mkdtemp(), "sd.pt")
>>> torch.save({"w": torch.arange(6.0).view(2, 3)}, p)
>>> f = PthFile(p)
>>> f.names(), f.info("w"), f.raw_info("w"), f.tensor("w")[1].tolist()
(['w'], (torch.float32, (2, 3)), ('F32', (2, 3)), [3.0, 4.0, 5.0])
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import RopeCheckpointError
from .file_io import read_range
from .torch_zip import TensorRecord, read_layout

if TYPE_CHECKING:  # annotations only: this module never imports torch at run time
    import torch

__all__ = ["PthFile", "dtype_name_of"]


class PthFile:
    """One ``torch.save`` file holding a flat dict of tensors.

    No tensor data is read until it is needed, and then one tensor at a time, by byte range (a
    memory map would keep every page it touched resident until the end).  Strided views of a
    larger storage and DEFLATE-compressed records are rebuilt from their storage's bytes."""

    def __init__(self, path):
        self.path = Path(path)
        self.layout: dict[str, TensorRecord] = read_layout(self.path)
        self.ranges = {
            n: (r.start, r.end) for n, r in self.layout.items() if r.data_start is not None and r.is_contiguous()
        }

    def names(self) -> list[str]:
        return list(self.layout)

    def info(self, name: str):
        r = self.layout[name]
        return r.dtype, r.shape

    def raw_info(self, name: str):
        r = self.layout[name]
        return r.dtype_name, r.shape

    def tensor(self, name: str) -> torch.Tensor:
        r = self.layout[name]
        rng = self.ranges.get(name)
        if rng is not None:
            return read_range(str(self.path), rng[0], rng[1], r.dtype_name, r.shape)
        import torch

        storage = self._storage_bytes(r)
        flat = torch.frombuffer(storage, dtype=torch.uint8) if len(storage) else torch.empty(0, dtype=torch.uint8)
        return flat.view(r.dtype).as_strided(r.shape, r.stride, r.offset).clone()

    def _storage_bytes(self, r: TensorRecord) -> bytearray:
        if r.data_start is not None:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(r.data_start)
                data = bytearray(f.read(r.storage_bytes))
        else:  # a DEFLATE record, as torch reads it
            try:
                with zipfile.ZipFile(self.path) as z:
                    data = bytearray(z.read(r.record))
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise RopeCheckpointError(f"{self.path}: record {r.record} cannot be read ({exc})") from None
        if len(data) != r.storage_bytes:
            raise RopeCheckpointError(f"{self.path} ended while reading record {r.record}")
        return data

    def byte_range(self, name: str):
        rng = self.ranges.get(name)
        return None if rng is None else (str(self.path), rng[0], rng[1])


def dtype_name_of(t) -> str:
    """safetensors dtype name of a TensorRecord (or anything with a torch ``dtype``)."""
    from .dtypes import dtype_name

    return getattr(t, "dtype_name", None) or dtype_name(t.dtype)
