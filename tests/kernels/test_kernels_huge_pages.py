"""Big out-of-place CPU outputs in transparent huge pages (``kernels.huge_pages``, opt-in with
``ROPEKIT_HUGE_PAGES=1``): the same bits as the reference through the public API, 2 MiB aligned, a
storage of exactly their own bytes that outlives every other reference, and torch's allocator
by default and wherever huge pages are off or fail."""

import gc
import mmap

import pytest
import torch

import ropekit as rk
from ropekit.kernels import huge_pages, native
from ropekit.kernels.reference import rotate_reference

#: a q of this shape is 64 MiB in float32, 32 MiB in bfloat16: both at least MIN_BYTES
BIG = (4, 2048, 32, 64)


@pytest.fixture(autouse=True)
def opted_in(monkeypatch):
    monkeypatch.setenv("ROPEKIT_HUGE_PAGES", "1")
    huge_pages.enabled.cache_clear()
    yield
    huge_pages.enabled.cache_clear()


def _anon_huge_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_big_outputs_are_huge_page_aligned_and_bit_identical(dtype):
    assert native.ensure(wait=True), native.status()
    spec = rk.RopeSpec(head_dim=64, base=500000.0)
    cos, sin = rk.cos_sin(spec, BIG[1])
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(BIG, generator=g).to(dtype), torch.randn(4, 2048, 8, 64, generator=g).to(dtype)
    got_q, got_k = rk.apply_rope_qk(q, k, cos, sin)
    pos = torch.arange(BIG[1]).expand(4, -1)
    kw = dict(interleaved=False, inverse=False, inplace=False)
    assert torch.equal(got_q, rotate_reference(q, cos, sin, pos, **kw))
    assert torch.equal(got_k, rotate_reference(k, cos, sin, pos, **kw))
    on = huge_pages.enabled()
    # torch.empty's big blocks start just past a malloc header, never on a 2 MiB boundary
    assert (got_q.data_ptr() % huge_pages.PAGE == 0) == on
    assert got_k.data_ptr() % huge_pages.PAGE != 0  # 8 or 16 MiB: torch's allocator
    assert got_q.is_contiguous() and got_q.untyped_storage().nbytes() == q.numel() * q.element_size()


def test_the_output_owns_its_mapping():
    out = huge_pages.new_output(torch.empty(BIG))
    out.fill_(3.0)
    gc.collect()
    assert out.sum().item() == 3.0 * out.numel()
    half = out[:1]  # a view keeps the mapping alive after the tensor is gone
    del out
    gc.collect()
    assert half.sum().item() == 3.0 * half.numel()


def test_the_first_writes_fault_in_huge_pages():
    if not huge_pages.enabled():  # opted in by the fixture: only the machine can say no
        pytest.skip("transparent huge pages are off on this machine")
    before = _anon_huge_kib()
    out = huge_pages.new_output(torch.empty(huge_pages.MIN_BYTES // 4))
    out.fill_(1.0)
    # the kernel may decline a huge page (fragmented memory); most of 32 MiB must still be huge
    assert _anon_huge_kib() - before >= 16 * 1024


def test_small_outputs_stay_on_torchs_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr(huge_pages, "_mapped", lambda n, dtype: calls.append(n))
    small = torch.empty(1, 1, 32, 128)
    assert huge_pages.new_output(small).shape == small.shape and not calls


@pytest.mark.parametrize("setting", [None, "0"])
def test_off_unless_asked_for(monkeypatch, setting):
    if setting is None:
        monkeypatch.delenv("ROPEKIT_HUGE_PAGES")
    else:
        monkeypatch.setenv("ROPEKIT_HUGE_PAGES", setting)
    huge_pages.enabled.cache_clear()
    assert not huge_pages.enabled()
    out = huge_pages.new_output(torch.empty(BIG))
    assert out.shape == BIG and out.data_ptr() % huge_pages.PAGE != 0


def test_a_failing_mapping_falls_back_to_torch_empty(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    like = torch.empty(BIG, dtype=torch.bfloat16).transpose(1, 2)
    out = huge_pages.new_output(like)
    assert out.shape == like.shape and out.dtype == torch.bfloat16 and out.is_contiguous()
