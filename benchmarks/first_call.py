"""First call vs steady state, each variant in a fresh process (issue: no compile stall).

    python benchmarks/first_call.py                  # cached native library (the usual case)
    python benchmarks/first_call.py --cold           # empty cache: the build runs in the background
    python benchmarks/first_call.py --out DIR        # CSV into DIR (default: a fresh temp dir)

Each row: a new Python process imports ropekit, times its first ``apply_rope_qk`` on
2 x 4096 x 32 x 128 q (8 kv heads) of one variant, then the median of 5 further calls.
Printed as a table; the ratio first / steady is the figure the issue asks for (<= 2).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time, torch
import ropekit as rk
from ropekit.kernels import cpu
dtype, layout, inplace, qkv = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
dt = getattr(torch, dtype)
g = torch.Generator().manual_seed(0)
cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=128, base=500000.0, layout=layout), 4096)
if qkv:
    x = torch.randn(2, 4096, 32 + 2 * 8, 128, generator=g).to(dt)
    call = lambda: rk.apply_rope_qkv(x, cos, sin, n_q_heads=32, n_kv_heads=8, layout=layout, inplace=inplace)
else:
    q, k = torch.randn(2, 4096, 32, 128, generator=g).to(dt), torch.randn(2, 4096, 8, 128, generator=g).to(dt)
    call = lambda: rk.apply_rope_qk(q, k, cos, sin, layout=layout, inplace=inplace)
t = time.perf_counter(); call(); first = time.perf_counter() - t
state = cpu.status()["native"]["state"]
times = []
for _ in range(5):
    t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
print(json.dumps(dict(first=first, steady=sorted(times)[2], state_at_first=state,
                      state_after=cpu.status()["native"]["state"])))
"""

VARIANTS = [
    ("float32", "half", False, False),
    ("float32", "half", True, False),
    ("bfloat16", "half", False, False),
    ("float16", "interleaved", False, False),
    ("bfloat16", "interleaved", True, False),
    ("float32", "half", False, True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="an empty native-kernel cache for every process")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="ropekit-first-call-")
    os.makedirs(out, exist_ok=True)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"load average {os.getloadavg()}, cache {'cold' if args.cold else 'warm'}")
    rows = []
    for dtype, layout, inplace, qkv in VARIANTS:
        if args.cold:
            env["ROPEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ropekit-cache-")
        argv = [sys.executable, "-c", CHILD, dtype, layout, str(int(inplace)), str(int(qkv))]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(
            dtype=dtype,
            layout=layout,
            inplace=inplace,
            call="qkv" if qkv else "qk",
            cache=("cold" if args.cold else "warm"),
        )
        r["ratio"] = r["first"] / r["steady"]
        rows.append(r)
        print(
            f"{dtype:9s} {layout:11s} {'in place' if inplace else 'out':8s} {r['call']:3s}  first {r['first'] * 1e3:8.1f} ms"
            f"  steady {r['steady'] * 1e3:8.1f} ms  {r['ratio']:5.2f}x  (native: {r['state_at_first']})"
        )
    path = os.path.join(out, f"first_call_{'cold' if args.cold else 'warm'}.csv")
    from ropekit.bench import write_csv  # here: the parent stays torch-free while it times fresh processes

    write_csv(rows, path)  # atomic, the benchmarks' one CSV writer
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
