"""The one GPU run: correctness of the Triton kernels on real CUDA against the fp64 oracle, then
the GPU benchmark side by side, in one process, with no network (at most ~8 minutes on an H100).

    python benchmarks/gpu_run.py --out DIR           # on a CUDA machine
    python benchmarks/gpu_run.py --cpu-smoke         # dry run of every code path on the CPU
                                                     # (TRITON_INTERPRET=1, tiny shapes, wall clock)

1. Correctness: every dtype (fp32, bf16, fp16, fp64) x layout x rotary fraction x in/out of place
   x inverse x table / in-kernel angles x q only / q+k, plus the backward (in and out of place),
   each against ``tests/oracle.py`` (independent fp64) with the suite's tolerances.  Failures are
   listed and the exit code is 1, but the benchmark still runs.
2. Benchmark (bf16, fp16; Llama-3-8B 32/8 heads and 70B 64/8 heads, head_dim 128; 8K-64K tokens):
   forward and backward GB/s (one read + one write of q and k) and % of the measured device copy
   bandwidth, for ropekit, transformers' eager ``apply_rotary_pos_emb``, ``torch.compile`` of it,
   and Liger / FlashInfer / flash-attn when importable (wheels brought along: no index here);
   then decode latency per call for 1, 2, 4, 8 tokens (32 sequences, each at its own position).
   Writes gpu_run.csv + gpu_run.png into --out and prints the table.

This script has not run on a GPU yet (none was available where it was written); --cpu-smoke runs
its code paths.
"""

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
HEADS = {"llama3-8b": (32, 8), "llama3-70b": (64, 8)}
D, BASE = 128, 500000.0


def _setup(cpu_smoke: bool):
    if cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def correctness(device: str, small: bool) -> list[str]:
    import itertools

    import torch

    import ropekit as rk

    from oracle import assert_close_to, rope_fp64

    failures = []
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    S, H = (5, 3) if small else (300, 7)
    grid = itertools.product(dtypes, ["half", "interleaved"], [1.0, 0.5], [False, True], [False, True], [False, True])
    for dtype, layout, frac, inplace, inverse, angles in grid:
        spec = rk.RopeSpec(head_dim=96, rotary_dim=int(96 * frac), base=BASE, layout=layout)
        g = torch.Generator().manual_seed(0)
        x64 = torch.randn(2, S, H, 96, generator=g, dtype=torch.float64)
        pos = torch.randint(0, 4096, (2, S), generator=g)
        want = rope_fp64(x64.to(dtype), rk.inv_freq(spec)[0], pos, layout, inverse=inverse)
        x = x64.to(dtype).to(device)
        kw = dict(positions=pos.to(device), inplace=inplace, inverse=inverse, backend="triton")
        label = f"{dtype} {layout} frac={frac} inplace={inplace} inverse={inverse} angles={angles}"
        try:
            if angles:
                y = rk.apply_rope(x, spec=spec, **kw)
            else:
                table = torch.float64 if dtype == torch.float64 else torch.float32  # fp64 x: fp64 tables
                cos, sin = rk.cos_sin(spec, 4096, dtype=table, device=device)
                y = rk.apply_rope(x, cos, sin, layout=layout, **kw)
            assert_close_to(y.cpu(), want, dtype)
        except Exception as exc:  # every case runs; all failures are listed
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
    # backward: the inverse rotation (in and out of place) against the oracle
    for dtype, inplace in itertools.product([torch.float32, torch.bfloat16], [False, True]):
        spec = rk.RopeSpec(head_dim=D, base=BASE)
        cos, sin = rk.cos_sin(spec, 4096, device=device)
        w = torch.randn(2, S, H, D, dtype=dtype, device=device, requires_grad=True)
        up = torch.randn(2, S, H, D, dtype=dtype, device=device)
        pos = torch.randint(0, 4096, (2, S))
        try:
            y = rk.apply_rope(w * 1, cos, sin, positions=pos.to(device), inplace=inplace, backend="triton")
            (grad,) = torch.autograd.grad(y, w, up)
            assert_close_to(grad.cpu(), rope_fp64(up.cpu(), rk.inv_freq(spec)[0], pos, "half", inverse=True), dtype)
        except Exception as exc:
            failures.append(f"backward {dtype} inplace={inplace}: {type(exc).__name__}: {exc}")
    return failures


def _timer(device: str):

    from ropekit.bench import time_cuda as median_cuda_seconds  # one CUDA-event timer for both benchmarks

    def time_cuda(fn, reps=30):
        return median_cuda_seconds(fn, reps)

    def time_wall(fn, reps=3):
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    return time_cuda if device == "cuda" else time_wall


def _providers(q, k, pos, cos, sin, device):
    """name -> forward call (q, k bshd) for ropekit and every importable peer, each in its native form."""
    import torch

    import ropekit as rk

    out = {"ropekit": lambda: rk.apply_rope_qk(q, k, cos, sin, backend="triton")}
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)  # transformers: bhsd (views, as a model has them)
    ch, sh = (torch.cat([t, t], -1)[pos].to(q.dtype) for t in (cos, sin))
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        out["hf eager"] = lambda: apply_rotary_pos_emb(qh, kh, ch, sh)
        compiled = torch.compile(apply_rotary_pos_emb)
        out["hf compiled"] = lambda: compiled(qh, kh, ch, sh)
    except ImportError:
        pass
    if device == "cuda":  # flash-attn, Liger, FlashInfer when installed: ropekit bench's one GPU peer table
        from ropekit.bench import gpu_peers

        out.update(gpu_peers(q, k, pos, cos, sin))
    return out


def benchmark(device: str, small: bool, log=print) -> list[dict]:
    import torch

    import ropekit as rk

    timer = _timer(device)
    tokens = (16, 32) if small else (8192, 16384, 32768, 65536)
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for model, (hq, hkv) in HEADS.items():
            for n in tokens:
                g = torch.Generator().manual_seed(0)
                q = torch.randn(1, n, hq, D, generator=g).to(device, dtype)
                k = torch.randn(1, n, hkv, D, generator=g).to(device, dtype)
                pos = torch.arange(n, device=device)[None]
                cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=D, base=BASE), n, device=device)
                nbytes = 2 * (q.numel() + k.numel()) * q.element_size()
                copy = timer(lambda: (q.clone(), k.clone()))
                calls = {(name, "fwd"): fn for name, fn in _providers(q, k, pos, cos, sin, device).items()}
                qg, kg = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
                yq, yk = rk.apply_rope_qk(qg, kg, cos, sin, backend="triton")
                gq, gk = torch.randn_like(yq), torch.randn_like(yk)
                calls[("ropekit", "bwd")] = lambda: torch.autograd.grad((yq, yk), (qg, kg), (gq, gk), retain_graph=True)
                calls[("ropekit in place", "fwd")] = lambda: rk.apply_rope_qk(
                    q, k, cos, sin, inplace=True, backend="triton"
                )
                for (name, direction), fn in calls.items():
                    try:
                        seconds = timer(fn)
                    except Exception as exc:  # a peer's API changed: say so, keep the others
                        log(f"  {name} {direction}: failed ({type(exc).__name__}: {exc})")
                        continue
                    row = dict(dtype=str(dtype)[6:], model=model, tokens=n, provider=name, direction=direction)
                    row.update(seconds=seconds, gb_per_s=nbytes / seconds / 1e9, pct_of_copy=100 * copy / seconds)
                    rows.append(row)
                    log(
                        f"  {row['dtype']:8s} {model:10s} T={n:6d} {name + ' ' + direction:22s} "
                        f"{row['gb_per_s']:8.1f} GB/s {row['pct_of_copy']:6.1f}% of copy"
                    )
        n_seq = 4 if small else 32
        for n_tok in (1, 2, 4, 8):  # decode: 32 sequences, n_tok new tokens each, own positions
            q = torch.randn(n_seq, n_tok, 32, D, device=device, dtype=dtype)
            k = torch.randn(n_seq, n_tok, 8, D, device=device, dtype=dtype)
            pos = (1000 + 37 * torch.arange(n_seq, device=device))[:, None] + torch.arange(n_tok, device=device)
            cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=D, base=BASE), 4096, device=device)
            for name, fn in _providers(q, k, pos, cos, sin, device).items():
                if name == "ropekit":
                    fn = lambda: rk.apply_rope_qk(q, k, cos, sin, positions=pos, inplace=True, backend="triton")  # noqa: E731
                    name = "ropekit in place"
                seconds = timer(fn)
                rows.append(dict(dtype=str(dtype)[6:], model="decode B=32", tokens=n_tok, provider=name))
                rows[-1].update(direction="fwd", seconds=seconds)
                log(f"  {str(dtype)[6:]:8s} decode {n_tok} tok {name:22s} {seconds * 1e6:9.1f} us per call")
    return rows


def _write(rows, out):
    fields = ["dtype", "model", "tokens", "provider", "direction", "seconds", "gb_per_s", "pct_of_copy"]
    path = os.path.join(out, "gpu_run.csv")
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG")
        return
    bw = [r for r in rows if "pct_of_copy" in r and r.get("pct_of_copy") is not None]
    fig, ax = plt.subplots(figsize=(10, 4))
    labels = sorted({(r["provider"], r["direction"]) for r in bw})
    for p, d in labels:
        pts = [r for r in bw if (r["provider"], r["direction"]) == (p, d) and r["model"] == "llama3-8b"]
        ax.plot(
            [r["tokens"] for r in pts if r["dtype"] == "bfloat16"],
            [r["pct_of_copy"] for r in pts if r["dtype"] == "bfloat16"],
            marker="o",
            label=f"{p} {d}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens (Llama-3-8B heads, bf16)")
    ax.set_ylabel("% of device copy bandwidth")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = os.path.join(out, "gpu_run.png")
    fig.savefig(png + ".tmp.png", dpi=110)
    os.replace(png + ".tmp.png", png)
    print(f"wrote {png}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for gpu_run.csv / .png (default: a fresh temp dir)")
    ap.add_argument("--cpu-smoke", action="store_true", help="run every code path on the CPU (interpreter)")
    args = ap.parse_args()
    _setup(args.cpu_smoke)
    import torch

    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --cpu-smoke for a dry run", file=sys.stderr)
        return 2
    out = args.out or tempfile.mkdtemp(prefix="ropekit-gpu-run-")
    os.makedirs(out, exist_ok=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    print(f"device {name}, torch {torch.__version__}, results in {out}")
    t0 = time.perf_counter()
    try:
        failures = correctness(device, small=args.cpu_smoke)
    except Exception:
        traceback.print_exc()
        failures = ["the correctness matrix itself crashed (traceback above)"]
    print(f"correctness: {len(failures)} failure(s) in {time.perf_counter() - t0:.0f} s")
    for f in failures:
        print("  FAIL", f)
    rows = benchmark(device, small=args.cpu_smoke)
    _write(rows, out)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
