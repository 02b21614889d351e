"""Running the tables: the CPU table (time / clone, median of runs) and the GPU table (GB/s, % of
copy bandwidth, forward and backward, decode latency)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from .peers import cpu_providers, gpu_peers
from .shapes import CPU_SHAPES, GPU_TOKENS, Shape, make_inputs
from .timing import time_cuda, time_round_robin

__all__ = ["run_cpu", "run_gpu"]


def run_cpu(
    shapes=CPU_SHAPES,
    dtypes=(torch.float32, torch.bfloat16),
    log: Callable[[str], None] = print,
    runs: int = 3,
    clock: str = "wall",
) -> list[dict]:
    """One row per (dtype, shape, provider): the median over ``runs`` runs (each the median of its
    interleaved rounds) of seconds per call and of the ratio to clone()'s time in the same run;
    ``ratio_runs`` lists every run's ratio, ``best_seconds`` the fastest single call.  ``clock``:
    ``"wall"`` or ``"cpu"`` (this thread's CPU time: meaningful with one thread, see ``CLOCKS``)."""
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            providers = cpu_providers(shape, dtype)
            fns = {name: fn for name, (fn, _) in providers.items()}
            timed = [time_round_robin(fns, clock=clock) for _ in range(runs)]  # name -> (min, median) per run
            for name, (_, what) in providers.items():
                ratios = [t[name][1] / t["clone"][1] for t in timed]
                row = dict(
                    device="cpu",
                    dtype=str(dtype).replace("torch.", ""),
                    shape=shape.name,
                    provider=name,
                    what=what,
                    seconds=statistics.median(t[name][1] for t in timed),
                    best_seconds=min(t[name][0] for t in timed),
                    ratio_to_clone=statistics.median(ratios),
                    ratio_runs=" ".join(f"{r:.3f}" for r in ratios),
                    runs=runs,
                    clock=clock,
                )
                rows.append(row)
                log(
                    f"  {row['dtype']:9s} {shape.name:12s} {name:22s} {row['seconds'] * 1e3:9.3f} ms"
                    f"  {row['ratio_to_clone']:6.2f}x clone (runs: {row['ratio_runs']})"
                )
    return rows


def run_gpu(
    tokens=GPU_TOKENS, dtypes=(torch.bfloat16, torch.float16), log: Callable[[str], None] = print
) -> list[dict]:
    """GB/s (one read + one write of q and k) and % of measured copy bandwidth, forward and
    backward, ropekit vs installed peers; then single-token decode latency."""
    import ropekit as rk

    if not torch.cuda.is_available():
        raise RuntimeError("run_gpu needs a CUDA device")
    rows = []
    for dtype in dtypes:
        for n in tokens:
            shape = Shape(f"T={n}", 1, n)
            q, k, pos, cos, sin = make_inputs(shape, dtype, "cuda", requires_grad=True)
            nbytes = 2 * (q.numel() + k.numel()) * q.element_size()
            copy = time_cuda(lambda: (q.detach().clone(), k.detach().clone()))
            yq, yk = rk.apply_rope_qk(q, k, cos, sin)
            gq, gk = torch.randn_like(yq), torch.randn_like(yk)
            calls = {
                ("copy", "fwd"): lambda: (q.detach().clone(), k.detach().clone()),
                ("ropekit", "fwd"): lambda: rk.apply_rope_qk(q.detach(), k.detach(), cos, sin),
                ("ropekit", "bwd"): lambda: torch.autograd.grad((yq, yk), (q, k), (gq, gk), retain_graph=True),
            }
            for name, fn in gpu_peers(q.detach(), k.detach(), pos, cos, sin).items():
                calls[(name, "fwd")] = fn
            for (name, direction), fn in calls.items():
                try:
                    seconds = time_cuda(fn)
                except Exception as exc:  # a peer's API changed: report it, keep the others
                    log(f"  {name} {direction}: failed ({type(exc).__name__}: {exc})")
                    continue
                gbs = nbytes / seconds / 1e9
                rows.append(
                    dict(
                        device=torch.cuda.get_device_name(),
                        dtype=str(dtype).replace("torch.", ""),
                        shape=shape.name,
                        provider=f"{name} {direction}",
                        what="",
                        seconds=seconds,
                        ratio_to_clone=seconds / copy,
                        gb_per_s=gbs,
                        pct_of_copy=100 * copy / seconds,
                    )
                )
                log(
                    f"  {rows[-1]['dtype']:9s} {shape.name:8s} {name + ' ' + direction:18s} {gbs:8.0f} GB/s  "
                    f"{100 * copy / seconds:5.1f}% of copy"
                )
        # decode: one token per sequence, 32 sequences; latency per call
        q, k, pos, cos, sin = make_inputs(Shape("decode", 32, 1, True), dtype, "cuda")
        seconds = time_cuda(lambda: rk.apply_rope_qk(q, k, cos, sin, positions=pos, inplace=True), reps=200)
        rows.append(
            dict(
                device=torch.cuda.get_device_name(),
                dtype=str(dtype).replace("torch.", ""),
                shape="decode B=32",
                provider="ropekit decode (in place)",
                what="",
                seconds=seconds,
                ratio_to_clone=float("nan"),
            )
        )
        log(f"  {rows[-1]['dtype']:9s} decode B=32 ropekit in place: {seconds * 1e6:.1f} us per call")
    return rows
