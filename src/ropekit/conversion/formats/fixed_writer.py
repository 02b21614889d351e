"""The writer base for files whose tensor byte ranges are fixed before any tensor arrives (a
``.pth`` zip laid out up front, a torch.save file written with placeholders)."""

from __future__ import annotations

import os

from .file_io import SourceFiles, copy_bytes, preallocate, pwrite_all, tensor_bytes

__all__ = ["FixedLayoutWriter"]


class FixedLayoutWriter:
    """What every writer of a file whose tensor byte ranges are fixed up front shares: subclasses
    lay the file out, then call ``open_output`` with {name: payload offset} and {name: size}; tensors
    then arrive in any order, as bytes or as kernel copies from a source file.  Same interface as
    ``safetensors_io.SafetensorsWriter``."""

    def open_output(self, path, offsets: dict, sizes: dict, mode: str, file_size: int = 0) -> None:
        """Open the output file; ``file_size``: the whole new file's size, reserved at once (``preallocate``)."""
        self.path = os.fspath(path)
        self.offsets, self.sizes = offsets, sizes
        self.total_size = sum(sizes.values())
        self._f = open(self.path, mode, buffering=0)
        preallocate(self._f.fileno(), file_size, self.path)
        self.fallback: str | None = None  # as SafetensorsWriter.fallback
        self._sources = SourceFiles()

    def source_fd(self, path: str) -> int:
        """An open descriptor of source file ``path`` (kept open until close / abort)."""
        return self._sources.get(path).fileno()

    def _check(self, name: str, nbytes: int) -> int:
        if self.sizes[name] != nbytes:
            raise RuntimeError(f"tensor {name!r} has {nbytes} bytes, the file reserved {self.sizes[name]}")  # a bug
        return self.offsets[name]

    def write_tensor(self, name: str, t) -> None:
        self.write_bytes(name, tensor_bytes(t))

    def write_bytes(self, name: str, data) -> memoryview:
        """Write the raw bytes of tensor ``name`` (a bytes-like object of exactly its size)."""
        data = memoryview(data).cast("B")
        pwrite_all(self._f.fileno(), data, self._check(name, data.nbytes))
        return data

    def copy_range(self, name: str, src_path: str, start: int, end: int):
        """Copy source bytes [start, end) into tensor ``name``'s range (kernel copy where it can);
        returns the open source file."""
        offset = self._check(name, end - start)
        src = self._sources.get(src_path)
        self.fallback = copy_bytes(src, self._f.fileno(), start, end, offset, name=name) or self.fallback
        return src

    def flush(self) -> None:
        """Nothing is pending: copies are issued at once (offsets are fixed by the layout)."""

    def close(self) -> None:
        self._f.close()
        self._sources.close()

    def abort(self) -> None:
        self._f.close()
        self._sources.close()
