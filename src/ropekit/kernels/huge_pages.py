"""Opt-in: fresh outputs of big out-of-place CPU calls backed by transparent huge pages.

Why it exists: torch's CPU allocator hands a tensor of 32 MiB or more fresh anonymous memory on
every call (glibc maps blocks that big afresh), and the first write to each 4 KiB page of it is a
page fault in which the kernel zeroes the page.  A private mapping advised ``MADV_HUGEPAGE``
faults in 2 MiB pages, 512 times fewer faults for the same bytes.

Why it is off by default (``ROPEKIT_HUGE_PAGES=1`` turns it on): measured on 2 cores, an
out-of-place ``apply_rope`` of a 2x4096x32x128 float32 tensor takes 30-37 ms with huge pages
against 49-51 ms without, once a process is warm; but the first few calls of a fresh process take
130-140 ms with them (fresh huge pages come slowly), which breaks the first-call promise (a first
call within 2x of the steady one; benchmarks/first_call.py measured 4.2x with them, 1.4x
without).  A long-running process that rotates big batches out of place can opt in.

Used only where it pays: outputs of at least ``MIN_BYTES`` (32 MiB), on Linux with transparent
huge pages not set to ``never``.  Anything else (or a failed ``mmap``/``madvise``) is an ordinary
tensor from torch's allocator.  The tensor owns its mapping (``torch.frombuffer`` keeps it alive
and unmaps it with the tensor), its storage is exactly its own bytes, 2 MiB aligned, and it is
contiguous like ``torch.empty``.

>>> import torch
>>> from ropekit.kernels.huge_pages import new_output
>>> out = new_output(torch.zeros(4, 8, dtype=torch.bfloat16).t())
>>> out.shape, out.dtype, out.is_contiguous()
(torch.Size([8, 4]), torch.bfloat16, True)
"""

from __future__ import annotations

import functools
import mmap
import os

import torch

__all__ = ["new_output", "enabled", "MIN_BYTES", "PAGE"]

#: a transparent huge page on x86-64 and arm64 (4 KiB base pages)
PAGE = 1 << 21
#: smaller outputs stay on torch's allocator: glibc's malloc maps blocks of 32 MiB and more
#: afresh on every call (its largest mmap threshold), but serves smaller ones again and again from
#: its heap, whose pages no longer fault (measured: a 2x4096x8x128 bf16 k cloned in a loop faults
#: on 0 of its pages; a huge-page output of it pays 4 MiB of zeroing each time)
MIN_BYTES = 16 * PAGE
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


@functools.cache
def enabled() -> bool:
    """Whether big outputs get huge pages here: ``ROPEKIT_HUGE_PAGES=1``, Linux ``madvise``, and
    THP not ``never``."""
    if os.environ.get("ROPEKIT_HUGE_PAGES") != "1" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open(_THP_MODE) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _mapped(n: int, dtype: torch.dtype) -> torch.Tensor | None:
    """n elements of ``dtype`` at the first 2 MiB boundary of a fresh private mapping, or None."""
    try:
        region = mmap.mmap(-1, n * dtype.itemsize + PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return None
    address = torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr()
    return torch.frombuffer(region, dtype=dtype, count=n, offset=(-address) % PAGE)


def new_output(like: torch.Tensor) -> torch.Tensor:
    """An uninitialized contiguous CPU tensor of ``like``'s shape and dtype: in huge pages when it
    is big enough and they are available, else torch's allocator."""
    if like.nbytes >= MIN_BYTES and enabled():
        out = _mapped(like.numel(), like.dtype)
        if out is not None:
            return out.view(like.shape)
    # empty_like is ~2.5x cheaper than empty(shape) on a decode step; both are contiguous here
    return torch.empty_like(like) if like.is_contiguous() else torch.empty(like.shape, dtype=like.dtype)
