"""Before / after on the CPU in one process: another checkout's ropekit against this one, side by side.

    python benchmarks/cpu_ab.py --old /path/to/other/checkout/src
    python benchmarks/cpu_ab.py --old OLD_SRC --shapes "S=4096,decode B=32" --runs 5

The other checkout's ``ropekit`` package is copied into a temporary directory as ``ropekit_ab_old``
(its imports inside the package are relative) and imported next to this one; each loads its own
native library.  Every provider (clone, old, new, both in place, Meta's complex form) is timed in
the same interleaved rounds as ``ropekit bench`` (one sample of each per round), so that the load
of other processes on a shared machine hits old and new alike; the figure to read is new / old,
the median of the runs' ratios.  Both results are compared bit for bit first.
"""

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile

import torch

import ropekit as rk
from ropekit.bench.peers import meta_rotate
from ropekit.bench.shapes import CPU_SHAPES, make_inputs
from ropekit.bench.timing import time_round_robin


def import_old(src: str):
    tmp = tempfile.mkdtemp(prefix="ropekit-ab-")
    shutil.copytree(os.path.join(src, "ropekit"), os.path.join(tmp, "ropekit_ab_old"))
    sys.path.insert(0, tmp)
    old = importlib.import_module("ropekit_ab_old")
    importlib.import_module("ropekit_ab_old.kernels.cpu").ready(wait=True)
    return old


def providers(old, shape, dtype):
    q, k, pos, cos, sin = make_inputs(shape, dtype)
    positions = pos if shape.decode else None
    freqs_cis = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))[pos].unsqueeze(2)
    a, b = rk.apply_rope_qk(q, k, cos, sin, positions=positions), old.apply_rope_qk(q, k, cos, sin, positions=positions)
    if not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])):
        raise SystemExit(f"old and new differ at {shape.name} {dtype}")
    qi, ki = q.clone(), k.clone()
    return {
        "clone": lambda: (q.clone(), k.clone()),
        "old": lambda: old.apply_rope_qk(q, k, cos, sin, positions=positions),
        "new": lambda: rk.apply_rope_qk(q, k, cos, sin, positions=positions),
        "old in place": lambda: old.apply_rope_qk(qi, ki, cos, sin, positions=positions, inplace=True),
        "new in place": lambda: rk.apply_rope_qk(qi, ki, cos, sin, positions=positions, inplace=True),
        "meta complex": lambda: meta_rotate(q, k, freqs_cis),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the src directory of the other checkout (holding ropekit/)")
    ap.add_argument("--shapes", default="S=512,S=4096,S=16384,decode B=32")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from ropekit.kernels import cpu

    cpu.ready(wait=True)
    old = import_old(args.old)
    wanted = [s.strip() for s in args.shapes.split(",")]
    print(f"load average {os.getloadavg()}, {torch.get_num_threads()} threads, clock {args.clock}; ms per call")
    for dtype in (torch.float32, torch.bfloat16):
        for shape in [s for s in CPU_SHAPES if s.name in wanted]:
            fns = providers(old, shape, dtype)
            runs = [time_round_robin(fns, clock=args.clock) for _ in range(args.runs)]
            cells = [f"{n} {statistics.median(r[n][1] for r in runs) * 1e3:.4g}" for n in fns]

            def ratio(a, b):
                return statistics.median(r[a][1] / r[b][1] for r in runs)

            print(
                f"{str(dtype).removeprefix('torch.'):9s} {shape.name:12s} " + " | ".join(cells) + f" | new/old "
                f"{ratio('new', 'old'):.3f}, in place {ratio('new in place', 'old in place'):.3f}, "
                f"new/clone {ratio('new', 'clone'):.3f}, new/meta {ratio('new', 'meta complex'):.3f}",
                flush=True,
            )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
