"""How long does the doctor take?  fingerprint (one black-box call + the fit) and compare, on CPU.

Side by side in one run: head_dim 64 / 128 / 256, fp32 / bf16, for transformers' rotate_half and
Llama 3.1 scaling (the slowest fit: llama3 candidates are verified one by one).  Each cell is the
best of ``--repeat`` runs after one warm-up; the "fn" column is the time of the single call to
the implementation itself (what any probe must pay), so the fit's own cost is the difference.

    python benchmarks/doctor_speed.py        # prints a markdown table, writes results/doctor_speed.{csv,png}
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import torch

import ropekit as rk
from ropekit import zoo
from ropekit.doctor.probe import SMALL_POSITIONS, long_positions


def _timed(f, repeat):
    f()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)  # best of N: the machine may be shared; the minimum is the least disturbed run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name, factory in (("rotate_half", zoo.hf_rotate_half), ("llama3.1", zoo.llama31_scaled)):
        for D in (64, 128, 256):
            base = zoo.hf_rotate_half(D) if name == "rotate_half" else factory(head_dim=D)
            for dtype in (torch.float32, torch.bfloat16):
                fn = base if dtype == torch.float32 else (lambda x, p, f=base, dt=dtype: f(x.float(), p).to(dt))
                P = len(SMALL_POSITIONS + long_positions(2**20))
                x = torch.eye(D, dtype=dtype).repeat(P, 1)
                pos = torch.arange(P).repeat_interleave(D)
                t_fn = _timed(lambda: fn(x, pos), args.repeat)
                t_fp = _timed(lambda: rk.fingerprint(fn, D, dtype=dtype), args.repeat)
                ref = zoo.hf_rotate_half(D, 10000.0)
                t_cmp = _timed(lambda: rk.compare(ref, fn, D, dtype=dtype), max(1, args.repeat // 2))
                fp = rk.fingerprint(fn, D, dtype=dtype)
                rows.append(
                    dict(
                        impl=name,
                        head_dim=D,
                        dtype=str(dtype).replace("torch.", ""),
                        fn_ms=1e3 * t_fn,
                        fingerprint_ms=1e3 * t_fp,
                        compare_ms=1e3 * t_cmp,
                        recovered=fp.spec is not None,
                    )
                )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; best of {args.repeat}")
    print(
        "| impl | head_dim | dtype | fn call (ms) | fingerprint (ms) | compare vs rotate_half (ms) | spec recovered |"
    )
    print("|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['impl']} | {r['head_dim']} | {r['dtype']} | {r['fn_ms']:.1f} | {r['fingerprint_ms']:.1f} | "
            f"{r['compare_ms']:.1f} | {'yes' if r['recovered'] else 'NO'} |"
        )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "doctor_speed.csv")
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG written")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("rotate_half", "llama3.1"):
        for dt in ("float32", "bfloat16"):
            sel = [r for r in rows if r["impl"] == name and r["dtype"] == dt]
            ax.plot([r["head_dim"] for r in sel], [r["fingerprint_ms"] for r in sel], marker="o", label=f"{name} {dt}")
    ax.axhline(1000, color="red", linestyle="--", label="1 s budget")
    ax.set_xlabel("head_dim")
    ax.set_ylabel("fingerprint time (ms, CPU)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(args.out, "doctor_speed.png")
    fig.savefig(png + ".tmp.png", dpi=110)
    os.replace(png + ".tmp.png", png)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
