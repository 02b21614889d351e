"""How far from the truth are RoPE cos/sin tables at long positions?

Side by side, for Llama-3-style heads (head_dim 128, base 500000) with default and llama3 scaling:

* transformers' ``LlamaRotaryEmbedding`` (its float32 table),
* ropekit ``precision="hf"`` (transformers' arithmetic reproduced: should match it exactly),
* ropekit ``precision="exact"`` (float64 angles and trig, one cast to float32).

The truth: frequencies from the defining formula in mpmath (40 digits), angle ``p * inv_freq``
reduced mod 2 pi in mpmath, float64 cos/sin of the reduced angle (error ~1e-16).  Each cell is the
max |error| of cos and sin over a window of positions ending at the column's position.

    python benchmarks/accuracy.py            # prints a markdown table, writes results/accuracy.{csv,png}
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time

import mpmath
import torch

import ropekit as rk

mpmath.mp.dps = 40
TWO_PI = 2 * mpmath.pi
HEAD_DIM, BASE = 128, 500000.0
LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
COLUMNS = {"4K": 4096, "128K": 131072, "1M": 2**20, "16M": 2**24}


def truth_inv_freq(scaling: str) -> list:
    inv = [mpmath.mpf(BASE) ** (-mpmath.mpf(2 * i) / HEAD_DIM) for i in range(HEAD_DIM // 2)]
    if scaling == "default":
        return inv
    f, lo, hi, old = (
        LLAMA3[k] for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    )
    out = []
    for x in inv:
        wavelen = TWO_PI / x
        if wavelen < old / hi:
            out.append(x)
        elif wavelen > old / lo:
            out.append(x / f)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * x / f + smooth * x)
    return out


def truth_tables(inv: list, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    cos = torch.empty(len(positions), len(inv), dtype=torch.float64)
    sin = torch.empty_like(cos)
    for r, p in enumerate(positions):
        for c, f in enumerate(inv):
            a = float(mpmath.fmod(p * f, TWO_PI))  # exact reduction, then a float64 of a small angle
            cos[r, c], sin[r, c] = math.cos(a), math.sin(a)
    return cos, sin


def methods(scaling: str):
    transformers = rk.errors.require("transformers", "hf")
    transformers.logging.set_verbosity_error()
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    kwargs = dict(hidden_size=HEAD_DIM * 4, num_attention_heads=4, rope_theta=BASE)
    if scaling == "llama3":
        kwargs.update(max_position_embeddings=131072, rope_scaling={"rope_type": "llama3", **LLAMA3})
    else:
        kwargs.update(max_position_embeddings=8192)
    config = transformers.LlamaConfig(**kwargs)
    spec = rk.from_config(config)
    module = LlamaRotaryEmbedding(config)

    def hf_module(pos):
        cos, sin = module(torch.zeros(1), pos[None, :])
        return cos[0, :, : HEAD_DIM // 2], sin[0, :, : HEAD_DIM // 2]

    return {
        "transformers LlamaRotaryEmbedding": hf_module,
        'ropekit precision="hf"': lambda pos: rk.cos_sin(spec, pos, precision="hf"),
        'ropekit precision="exact"': lambda pos: rk.cos_sin(spec, pos, precision="exact"),
    }


def max_err(fn, pos: torch.Tensor, truth) -> float:
    cos, sin = fn(pos)
    return max((cos.double() - truth[0]).abs().max().item(), (sin.double() - truth[1]).abs().max().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=64, help="positions per column (ending at the column)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    rows, curves = [], {}
    for scaling in ("default", "llama3"):
        inv = truth_inv_freq(scaling)
        fns = methods(scaling)
        for label, end in COLUMNS.items():
            pos = list(range(end - args.window + 1, end + 1))
            truth = truth_tables(inv, pos)
            for name, fn in fns.items():
                rows.append((name, scaling, label, end, max_err(fn, torch.tensor(pos), truth)))
        if not args.no_plot:  # error vs position, one point per power-of-two window
            points = [2**k for k in range(4, 25)]
            for name, fn in fns.items():
                ys = []
                for end in points:
                    pos = list(range(end - 7, end + 1))
                    ys.append(max_err(fn, torch.tensor(pos), truth_tables(inv, pos)))
                curves[(name, scaling)] = (points, ys)

    csv_path = os.path.join(args.out, "accuracy.csv")
    with open(csv_path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "scaling", "column", "position", "max_abs_err_cos_sin"])
        for name, scaling, label, end, err in rows:
            w.writerow([name, scaling, label, end, f"{err:.6e}"])
    os.replace(csv_path + ".tmp", csv_path)

    print(
        f"cos/sin max abs error vs an exact (mpmath-reduced) fp64 truth, head_dim={HEAD_DIM}, base={BASE:g}, "
        f"window of {args.window} positions ending at each column\n"
    )
    print("| method | scaling | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for scaling in ("default", "llama3"):
        for name in ("transformers LlamaRotaryEmbedding", 'ropekit precision="hf"', 'ropekit precision="exact"'):
            cells = [f"{err:.2e}" for n, s, _, _, err in rows if n == name and s == scaling]
            print(f"| {name} | {scaling} | " + " | ".join(cells) + " |")
    print(f"\nwrote {csv_path}")

    if curves:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot (pip install 'ropekit[plot]')")
        else:
            fig, ax = plt.subplots(figsize=(7, 4.2))
            styles = {
                "transformers LlamaRotaryEmbedding": "-o",
                'ropekit precision="hf"': ":",
                'ropekit precision="exact"': "-s",
            }
            for (name, scaling), (xs, ys) in curves.items():
                ax.loglog(xs, [max(y, 1e-10) for y in ys], styles[name], ms=3, label=f"{name} ({scaling})")
            ax.axhline(2**-24, color="gray", lw=0.8, ls="--")
            ax.text(20, 2**-24 * 1.4, "half an fp32 ulp of 1", color="gray", fontsize=8)
            ax.set_xlabel("position")
            ax.set_ylabel("max |error| of cos/sin")
            ax.set_title(f"RoPE table error vs position (head_dim {HEAD_DIM}, base {BASE:g})")
            ax.legend(fontsize=7)
            fig.tight_layout()
            png = os.path.join(args.out, "accuracy.png")
            fig.savefig(png + ".tmp.png", dpi=120)
            os.replace(png + ".tmp.png", png)
            print(f"wrote {png}")
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
