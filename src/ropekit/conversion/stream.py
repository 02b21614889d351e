"""Streaming the planned tensors into the output files, one tensor at a time.

Every output file is laid out before any tensor arrives (a safetensors header, a ``.pth`` zip),
so each tensor has its own byte range and peak memory is a few tensors, not the checkpoint.  The
work splits in two: this thread has the kernel copy untouched bytes (``copy_range``, runs of them
merged), a helper thread reads the q/k tensors by byte range, reorders their rows (exact, any
dtype) and writes them.  A file is finished (its helper work waited for, the file closed) only
after the next one's copies are issued: the helper writes one shard's q/k while the kernel copies
the next.  All of it releases the GIL.

Every format's writer has the same interface, ``Writer``; which class writes which format is a
``Writers`` value the caller passes (tests pass the torch.save reference writer).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from .formats import raw
from .formats.base import Checkpoint, permute_tensor
from .formats.pth_writer import PthZipWriter
from .formats.safetensors_io import SafetensorsWriter
from .plan import Step

__all__ = ["Writer", "Writers", "Counts", "Streamer", "Progress"]


class Writer(Protocol):
    """One output file whose tensors' byte ranges are fixed when it is opened."""

    path: str
    total_size: int
    #: why pass-through bytes went through user space (None: all copied in the kernel)
    fallback: str | None

    def source_fd(self, path: str) -> int: ...  # an open descriptor of a source file
    def write_tensor(self, name: str, t) -> None: ...
    def write_bytes(self, name: str, data) -> object: ...
    def copy_range(self, name: str, src_path: str, start: int, end: int) -> object: ...
    def flush(self) -> None: ...  # issue pending kernel copies
    def close(self) -> None: ...  # finish the file (raises if a tensor is missing)
    def abort(self) -> None: ...  # close without finishing (the file is discarded)


@dataclass(frozen=True)
class Writers:
    """Which class writes each output format, and how q/k rows move.

    ``safetensors(path, entries, metadata, align, clone)`` and ``pth(path, entries, align)`` open a
    ``Writer``; ``entries``: [(name, dtype name, shape)].  ``permute_bytes``: reorder q/k rows as
    bytes (no torch); False: through ``ropekit.permute`` on tensors (the reference the byte path
    is tested against)."""

    safetensors: Callable[..., Writer] = SafetensorsWriter
    pth: Callable[..., Writer] = PthZipWriter
    permute_bytes: bool = True


@dataclass
class Counts:
    copied: int = 0
    permuted: int = 0
    added: int = 0
    bytes_written: int = 0
    notes: list[str] = field(default_factory=list)


class Progress:
    """A byte counter on stderr: tqdm's bar where tqdm is installed, else one plain line that
    rewrites itself (a terminal only: a log file gets the summary line alone)."""

    def __init__(self, total: int, enabled: bool):
        self._bar, self._plain, self._done, self._total = None, False, 0, total
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._plain = sys.stderr.isatty()
            return
        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert", file=sys.stderr)

    def update(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._plain:
            pct = 100 * self._done / self._total if self._total else 100
            print(f"\rconvert {pct:5.1f}% of {self._total / 2**20:.1f} MiB", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._plain:
            print(file=sys.stderr)


class Streamer:
    """Writes planned steps from ``ckpt`` into opened writers (see the module docstring)."""

    def __init__(self, ckpt: Checkpoint, dst_layout: str, writers: Writers, progress: Progress, after_tensor=None):
        self.ckpt, self.dst_layout, self.writers = ckpt, dst_layout, writers
        self.progress, self.after_tensor = progress, after_tensor
        self.counts = Counts()
        self._rows = raw.RowReader()  # buffers reused across tensors and files
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ropekit-write")

    def run(self, files: list[tuple[Writer, list[Step]]]) -> None:
        """Stream every file, then close it; on any failure the helper is stopped before the
        files are aborted (it may be writing into one)."""
        try:
            previous = None
            for writer, steps in files:
                finish = self._start(writer, steps)
                if previous is not None:
                    previous()
                previous = finish
            if previous is not None:
                previous()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            for writer, _ in files:
                writer.abort()
                self._note_fallback(writer)

    def _start(self, writer: Writer, steps: list[Step]) -> Callable[[], None]:
        """Issue one file's work; returns the function that finishes it."""
        writer.flush()  # a cloned file is copied now, before the helper writes anything over it
        futures = []
        for step in steps:
            rng = self.ckpt.byte_range(step.src) if step.action == "copy" else None
            if rng is None:
                futures.append((step, self._pool.submit(self._make_and_write, writer, step)))
                continue
            writer.copy_range(step.dst, *rng)
            self.counts.copied += 1
            self._done(step, rng[2] - rng[1])
        writer.flush()

        def finish():
            try:
                for step, future in futures:
                    nbytes = future.result()
                    self.counts.permuted += step.action == "permute"
                    self.counts.added += step.action == "add"
                    self.counts.copied += step.action == "copy"
                    self._done(step, nbytes)
                writer.close()
            finally:
                self._note_fallback(writer)

        return finish

    def _make_and_write(self, writer: Writer, step: Step) -> int:  # the helper thread
        ckpt = self.ckpt
        rng = ckpt.byte_range(step.src) if step.action == "permute" and self.writers.permute_bytes else None
        if rng is not None:  # bytes in, bytes out: no torch

            def order():
                return raw.row_order(step.role, ckpt.geometry, ckpt.layout, self.dst_layout, step.shape[0])

            key = (step.role, step.shape)
            handle, data = self._rows.read(writer.source_fd(rng[0]), rng[1], rng[2], key, order, rng[0])
            try:
                writer.write_bytes(step.dst, data)
                return data.nbytes
            finally:
                self._rows.release(handle)
        if step.action == "add":
            t = step.make()
        else:
            t = ckpt.tensor(step.src)
            if step.action == "permute":
                t = permute_tensor(t, step.role, ckpt.geometry, ckpt.layout, self.dst_layout, step.src)
        writer.write_tensor(step.dst, t)
        return step.nbytes

    def _done(self, step: Step, nbytes: int) -> None:
        self.counts.bytes_written += nbytes
        self.progress.update(nbytes)
        if self.after_tensor is not None:
            self.after_tensor(step)

    def _note_fallback(self, writer: Writer) -> None:
        notes = self.counts.notes
        if writer.fallback and not any(n.startswith("pass-through") for n in notes):
            notes.append(f"pass-through tensors were copied through user space, not in the kernel ({writer.fallback})")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.progress.close()
