"""The native CPU kernel (``kernels.native``, behind backend "cpu" and the auto CPU path): bit for bit
the reference over dtypes x layouts x partial rotary x strides x in place x inverse; its first build
never blocks a call (background thread, the lean path meanwhile, visible); a fresh process loads
the cached library; no compiler is a visible fallback; bad positions are refused."""

import logging
import os
import subprocess
import sys

import pytest
import torch

import ropekit as rk
from ropekit.errors import RopePositionError
from ropekit.kernels import cpu, native
from ropekit.kernels.reference import rotate_reference

from oracle import assert_close_to, rope_fp64


@pytest.fixture(scope="module", autouse=True)
def built():
    assert native.ensure(wait=True), native.status()


def _streaming(monkeypatch, on: bool) -> None:
    """Out-of-place calls stream their outputs (bypassing the cache, pages populated in chunks)
    from native.STREAM_MIN_BYTES on: 0 streams every one, a huge value none."""
    monkeypatch.setattr(native, "STREAM_MIN_BYTES", 0 if on else 1 << 62)


def _needs_split(threads: str) -> None:
    """Skip where this way of splitting calls is not built (torch's OpenMP team only where torch
    runs on GNU OpenMP)."""
    assert native.ensure(wait=True)
    if threads not in native._STATE["splits"]:
        pytest.skip(f"{threads}: torch here does not run on GNU OpenMP")


@pytest.fixture(params=[native.TORCH_TEAM, native.HELPERS])
def split(request, monkeypatch):
    """Each way of splitting a call over threads that this machine has, forced on small tensors."""
    _needs_split(request.param)
    before = native.status()["threads"]
    native.use_threads(request.param)
    monkeypatch.setattr(native, "PARALLEL_MIN_NUMEL", 1)
    yield request.param
    native.use_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [80, 32])
@pytest.mark.parametrize("stream", [False, True])
def test_native_is_bit_identical_to_reference(dtype, layout, rotary_dim, stream, monkeypatch):
    _streaming(monkeypatch, stream)
    spec = rk.RopeSpec(head_dim=80, rotary_dim=rotary_dim, layout=layout)
    cos, sin = rk.cos_sin(spec, 50)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 3, 80, generator=g).to(dtype)
    pos = torch.randint(0, 50, (2, 7), generator=g)
    interleaved = layout == "interleaved"
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # a bhsd tensor seen as bshd
    spaced = torch.zeros(2, 7, 3, 160, dtype=dtype)[..., ::2]  # last-dim stride 2
    spaced.copy_(x)
    for view in (x, strided, spaced):
        for inverse in (False, True):
            want = rotate_reference(view, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=False)
            got = cpu.rotate_cpu(view, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=False)
            assert got.is_contiguous() and torch.equal(got, want)
            y = torch.zeros(2, 7, 3, 160, dtype=dtype)[..., ::2] if view is spaced else torch.empty_like(view)
            y.copy_(view)
            assert cpu.rotate_cpu(y, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=True) is y
            assert torch.equal(y, want)


def test_native_q_and_k_split_over_threads_match_reference(split):
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=64), 40)
    q, k = torch.randn(3, 11, 4, 64).bfloat16(), torch.randn(3, 11, 2, 64).bfloat16()
    pos = torch.randint(0, 40, (3, 11))
    gq, gk = cpu.rotate_qk_cpu(q, k, cos, sin, pos, interleaved=False, inverse=False, inplace=False)
    kw = dict(interleaved=False, inverse=False, inplace=False)
    assert torch.equal(gq, rotate_reference(q, cos, sin, pos, **kw))
    assert torch.equal(gk, rotate_reference(k, cos, sin, pos, **kw))
    # in place, every row is rotated exactly once (a chunk claimed twice would turn twice)
    for _ in range(20):  # the split takes a different share of the chunks each time
        yq, yk = q.clone(), k.clone()
        cpu.rotate_qk_cpu(yq, yk, cos, sin, pos, interleaved=False, inverse=False, inplace=True)
        assert torch.equal(yq, gq) and torch.equal(yk, gk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_streamed_outputs_over_many_chunks_and_threads_match_reference(dtype, layout, split, monkeypatch):
    """Outputs of several MiB, streamed and populated chunk by chunk, split over two threads;
    rotary_dim 96 of 128 (the tail copied), and a head dim whose rows are not 16-byte aligned
    (the ordinary stores)."""
    _streaming(monkeypatch, True)
    g = torch.Generator().manual_seed(5)
    for head_dim, rotary_dim in ((128, 128), (128, 96), (74, 70)):
        spec = rk.RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, layout=layout)
        cos, sin = rk.cos_sin(spec, 600)
        q = torch.randn(2, 300, 8, head_dim, generator=g).to(dtype)
        k = torch.randn(2, 300, 2, head_dim, generator=g).to(dtype)
        pos = torch.randint(0, 600, (2, 300), generator=g)
        kw = dict(interleaved=layout == "interleaved", inverse=False, inplace=False)
        gq, gk = cpu.rotate_qk_cpu(q, k, cos, sin, pos, **kw)
        assert torch.equal(gq, rotate_reference(q, cos, sin, pos, **kw))
        assert torch.equal(gk, rotate_reference(k, cos, sin, pos, **kw))


def test_calls_from_many_threads_at_once_match_reference(split):
    """Python threads calling at the same time (ctypes releases the GIL): one call has the helper
    threads, the others rotate alone; every result is the reference's."""
    import threading

    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=128), 64)
    g = torch.Generator().manual_seed(7)  # big enough that the calls' C parts (GIL released) overlap
    cases = [(torch.randn(4, 64, 8, 128, generator=g), torch.randint(0, 64, (4, 64), generator=g)) for _ in range(4)]
    kw = dict(interleaved=False, inverse=False, inplace=False)
    wants = [rotate_reference(x, cos, sin, pos, **kw) for x, pos in cases]
    failures = []

    def work(i):
        x, pos = cases[i]
        for _ in range(30):
            if not torch.equal(cpu.rotate_cpu(x, cos, sin, pos, **kw), wants[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.mark.parametrize("threads", [native.TORCH_TEAM, native.HELPERS])
def test_a_forked_child_rotates_alone(threads):
    """Neither the helper threads nor torch's OpenMP team survive a fork: a child's calls rotate
    on its one thread (and finish) instead of waiting for threads that are not there."""
    _needs_split(threads)
    script = (
        "import os, sys, torch, ropekit as rk\n"
        "from ropekit.kernels import cpu, native\n"
        "from ropekit.kernels.reference import rotate_reference\n"
        "assert native.ensure(wait=True)\n"
        f"native.use_threads({threads!r})\n"
        "native.PARALLEL_MIN_NUMEL = 1\n"
        "torch.set_num_threads(2)\n"
        "cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=64), 64)\n"
        "x, pos = torch.randn(4, 16, 6, 64), torch.randint(0, 64, (4, 16))\n"
        "kw = dict(interleaved=False, inverse=False, inplace=False)\n"
        "want = rotate_reference(x, cos, sin, pos, **kw)\n"
        "assert torch.equal(cpu.rotate_cpu(x, cos, sin, pos, **kw), want)  # the threads start here\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    ok = all(torch.equal(cpu.rotate_cpu(x, cos, sin, pos, **kw), want) for _ in range(5))\n"
        "    os._exit(0 if ok else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    env = dict(os.environ, ROPEKIT_CACHE_DIR=native._cache_dir())
    env["PYTHONPATH"] = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_auto_cpu_call_uses_native_and_matches_oracle(monkeypatch):
    seen = []
    real = native.rotate_native
    monkeypatch.setattr(native, "rotate_native", lambda *a, **kw: seen.append(1) or real(*a, **kw))
    spec = rk.RopeSpec(head_dim=64, rotary_dim=32, layout="interleaved")
    cos, sin = rk.cos_sin(spec, 64)
    x64 = torch.randn(2, 9, 3, 64, dtype=torch.float64)
    pos = torch.randint(0, 64, (2, 9))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        y = rk.apply_rope(x64.to(dtype), cos, sin, layout="interleaved", positions=pos)
        assert_close_to(y, rope_fp64(x64.to(dtype), rk.inv_freq(spec)[0], pos, "interleaved"), dtype)
    assert len(seen) == 3


def test_out_of_table_position_is_refused_by_the_kernel():
    # under torch.compile the host-side value checks are skipped: the kernel itself must refuse
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=16), 8)
    x = torch.randn(1, 3, 2, 16)
    for bad in (8, -1):
        pos = torch.tensor([[0, bad, 1]])
        with pytest.raises(RopePositionError, match=f"table row {bad}"):
            cpu.rotate_cpu(x, cos, sin, pos, interleaved=False, inverse=False, inplace=False)


def _fresh_state(monkeypatch, tmp_path):
    monkeypatch.setenv("ROPEKIT_CACHE_DIR", str(tmp_path))
    fresh = {"state": "not built", "reason": None, "cache": None, "thread": None, "threads": None}
    monkeypatch.setattr(native, "_STATE", fresh)


def test_first_build_runs_in_the_background_and_calls_go_on(monkeypatch, tmp_path, caplog):
    _fresh_state(monkeypatch, tmp_path)
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=32), 16)
    x = torch.randn(1, 16, 2, 32)
    with caplog.at_level(logging.INFO, logger="ropekit"):
        y = rk.apply_rope(x, cos, sin)  # starts the build, does not wait for it
        assert native.status()["state"] in ("building", "ready")
        assert torch.equal(y, rk.apply_rope(x, cos, sin, backend="reference"))
        assert native.ensure(wait=True)
    assert "building the native CPU kernel in the background" in caplog.text
    assert native.status()["cache"].startswith(str(tmp_path)) and os.path.exists(native.status()["cache"])
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".so")] == []  # no temporary left behind


def test_a_fresh_process_loads_the_cached_library_at_its_first_call(tmp_path):
    env = dict(os.environ, ROPEKIT_CACHE_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    build = "from ropekit.kernels import native; assert native.ensure(wait=True)"
    first_call = (
        "import torch, ropekit as rk\nfrom ropekit.kernels import native\n"
        "cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=32), 16)\n"
        "rk.apply_rope(torch.randn(1, 16, 2, 32), cos, sin)\nprint(native.status()['state'])\n"
    )
    for code in (build, first_call):
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ready"  # loaded from disk before the first call returned


def test_without_a_compiler_the_eager_fallback_is_visible(monkeypatch, tmp_path, caplog):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=16), 8)
    x = torch.randn(1, 8, 2, 16)
    with caplog.at_level(logging.WARNING, logger="ropekit"):
        y = rk.apply_rope(x, cos, sin, backend="cpu")
    assert "no C compiler" in caplog.text and "eager rotation" in caplog.text
    assert cpu.status()["fallback_reason"].startswith("no C compiler")
    assert torch.equal(y, rk.apply_rope(x, cos, sin, backend="reference"))


def test_a_failing_build_is_a_visible_fallback(monkeypatch, tmp_path, caplog):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "C_SOURCE", "this is not C")
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=16), 8)
    x = torch.randn(1, 8, 2, 16)
    with caplog.at_level(logging.WARNING, logger="ropekit"):
        y = rk.apply_rope(x, cos, sin, backend="cpu")
    assert "native CPU kernel unavailable" in caplog.text and native.status()["state"] == "unavailable"
    assert torch.equal(y, rk.apply_rope(x, cos, sin, backend="reference"))
    assert os.listdir(tmp_path) == []  # the failed build left nothing behind


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("R", [70, 64])
def test_native_bf16_matches_reference_on_every_bf16_bit_pattern(inplace, layout, R, monkeypatch):
    """Every one of the 65536 bf16 patterns (NaNs, infinities, subnormals, -0) as either pair member,
    compared as bits (a NaN is not equal to itself): the SIMD steps (8 pairs half, 4 interleaved)
    and the scalar tail (70 pairs = 8 steps + 6, or 17 steps + 2) round exactly like torch's
    float32 -> bfloat16.  Out of place, 64 pairs is an aligned row: into memory already mapped
    (the output written once before) it is written by the streaming steps, into fresh pages by the
    ordinary ones (fresh pages are zeroed into the cache, and written through it)."""
    _streaming(monkeypatch, True)
    patterns = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    g = torch.Generator().manual_seed(3)
    first = patterns[torch.randperm(patterns.numel(), generator=g)]
    second = patterns[torch.randperm(patterns.numel(), generator=g)]
    n = patterns.numel() // R * R
    members = (first[:n].view(-1, R), second[:n].view(-1, R))
    x = torch.stack(members, dim=-1).flatten(-2) if layout == "interleaved" else torch.cat(members, dim=-1)
    x = x.view(torch.bfloat16)
    x = x.view(1, -1, 1, 2 * R)
    S = x.shape[1]
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=2 * R, base=100.0), S)
    pos = torch.arange(S).view(1, S)
    kw = dict(interleaved=layout == "interleaved", inverse=False)
    want = rotate_reference(x, cos, sin, pos, inplace=False, **kw)
    y = x.clone()
    got = cpu.rotate_cpu(y, cos, sin, pos, inplace=inplace, **kw)
    assert (got is y) == inplace
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    assert want.isnan().any() and want.isinf().any()
    if not inplace:  # an output whose pages are all mapped already: the streaming steps
        mapped = torch.zeros_like(x)
        native.rotate_native([(x, mapped)], cos.float(), sin.float(), pos, **kw)
        assert torch.equal(mapped.view(torch.int16), want.view(torch.int16))


def test_the_built_library_has_no_fused_multiply_add():
    """-ffp-contract=off is not enough on its own: gcc 12 vectorized an interleaved f64 loop into
    vfmaddsub (one rounding where the reference rounds twice; found by a property test).  The
    machine code itself must hold no fused multiply-add of any form."""
    import re
    import shutil

    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    path = native.status()["cache"]
    code = subprocess.run([objdump, "-d", path], capture_output=True, text=True, check=True).stdout
    fused = sorted(set(re.findall(r"\bvf(?:n?m(?:add|sub)|maddsub|msubadd)\w*", code)))
    assert code.count("\n") > 1000 and not fused, fused
