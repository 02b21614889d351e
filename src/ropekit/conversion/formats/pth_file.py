"""One ``torch.save`` file opened for streaming: its layout read without running code, its
tensors read one at a time by byte range.

>>> import os, tempfile, torch
>>> p = os.path.join(tempfile.mkdtemp(), "sd.pt")
>>> torch.save({"w": torch.arange(6.0).view(2, 3)}, p)
>>> PthFile(p).raw_info("w")
('F32', (2, 3))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import RopeCheckpointError

if TYPE_CHECKING:  # annotations only: this module never imports torch at run time
    import torch

__all__ = ["PthFile", "dtype_name_of"]


class PthFile:
    """One ``torch.save`` file opened for streaming.

    Its layout (names, dtypes, shapes, byte offsets) comes from the file's pickle, read without
    torch and without running code (``formats/torch_zip.py``), or, for anything that reader does
    not know, from a weights-only load on the meta device.  No tensor data is read until it is
    needed, and then one tensor at a time, by byte range (a memory map would keep every page it
    touched resident until the end).  Tensors stored as strided views of a larger storage come
    from torch's own memory-mapped load.

    >>> import os, tempfile, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "sd.pt")
    >>> torch.save({"w": torch.arange(6.0).view(2, 3)}, p)
    >>> f = PthFile(p)
    >>> f.names(), f.info("w"), f.tensor("w")[1].tolist()
    (['w'], (torch.float32, (2, 3)), [3.0, 4.0, 5.0])
    """

    def __init__(self, path, what: str = "PyTorch checkpoint"):
        from .torch_zip import read_layout

        self.path = Path(path)
        self._mapped: dict | None = None
        # a plain state dict's layout is read without torch (formats/torch_zip.py); anything else
        # goes to torch.load, which also says what is wrong with it
        records = read_layout(self.path)
        if records is not None:
            self.layout: dict = records
            self.ranges = {n: (r.start, r.end) for n, r in records.items() if r.is_contiguous()}
            return
        import torch

        try:
            sd = torch.load(self.path, map_location="meta", weights_only=True)
        except Exception as exc:  # a pickle that is not plain tensors, or a truncated zip
            raise RopeCheckpointError(
                f"{self.path} is not a weights-only {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise RopeCheckpointError(f"{self.path} does not hold a flat dict of tensors")
        self.layout = sd
        self.ranges = _byte_ranges(sd, self.path)

    def names(self) -> list[str]:
        return list(self.layout)

    def info(self, name: str):
        t = self.layout[name]
        return t.dtype, tuple(t.shape)

    def raw_info(self, name: str):
        t = self.layout[name]
        return dtype_name_of(t), tuple(t.shape)

    def tensor(self, name: str) -> torch.Tensor:
        from .safetensors_io import read_range

        rng = self.ranges.get(name)
        if rng is not None:
            t = self.layout[name]
            return read_range(str(self.path), rng[0], rng[1], dtype_name_of(t), t.shape)
        if self._mapped is None:  # a strided view of a larger storage: torch materializes it
            import torch

            self._mapped = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        return self._mapped[name]

    def byte_range(self, name: str):
        rng = self.ranges.get(name)
        return None if rng is None else (str(self.path), rng[0], rng[1])


def dtype_name_of(t) -> str:
    """safetensors dtype name of a TensorRecord (no torch) or a meta tensor."""
    from .raw import dtype_name

    return getattr(t, "dtype_name", None) or dtype_name(t.dtype)


def _byte_ranges(layout: dict, path: Path) -> dict:
    """name -> (start, end) in the file for every contiguous tensor of a meta-device load."""
    out = {}
    for name, t in layout.items():
        base = getattr(t.untyped_storage(), "_checkpoint_offset", None)
        if base is None or not t.is_contiguous():
            continue
        start = base + t.storage_offset() * t.element_size()
        out[name] = (start, start + t.numel() * t.element_size())
    return out
