"""First call vs steady state, each variant in a fresh process (issue: no compile stall).

    python benchmarks/first_call.py                  # cached native library (the usual case)
    python benchmarks/first_call.py --cold           # empty cache: the build runs in the background
    python benchmarks/first_call.py --no-bytecode    # ropekit's own .py compiled on import, every process
    python benchmarks/first_call.py --out DIR        # CSV into DIR (default: a fresh temp dir)

Each row: a new Python process imports ropekit, times its first call of one variant on
2 x 4096 tokens of Llama-3-8B heads (q 32 x 128, k 8 x 128; qkv packs 32 + 2 x 8 heads), then the
median of 5 further calls of the same variant.  Printed as a table; the ratio first / steady is
the figure the issue asks for (<= 2).  Variants: apply_rope / apply_rope_qk / apply_rope_qkv, out
of place and in place, fp32 / bf16 / fp16, half and interleaved, and with autograd (forward and
backward timed together; in place on a non-leaf made inside the timed call).  A grad row first
runs one backward of torch's own on an unrelated tensor: torch's first ``autograd.backward`` with
explicit gradients imports sympy (~2 s), a cost of any torch program, not of ropekit's first call.

By default ropekit's bytecode is written once (into a private cache prefix, before the timed
processes), as ``pip install`` does when it installs the package: an installed ropekit never
compiles its own source on import.  ``--no-bytecode`` keeps ``PYTHONDONTWRITEBYTECODE`` as the
environment sets it, which adds ropekit's import compile (~40 ms) to every first call.
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
fn, dtype, layout, inplace, grad = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5] == "1"
dt = getattr(torch, dtype)
g = torch.Generator().manual_seed(0)
cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=128, base=500000.0, layout=layout), 4096)
kw = dict(layout=layout, inplace=inplace)
if fn == "qkv":
    x = torch.randn(2, 4096, 32 + 2 * 8, 128, generator=g).to(dt).requires_grad_(grad)
    rotate = lambda t: (rk.apply_rope_qkv(t[0], cos, sin, n_q_heads=32, n_kv_heads=8, **kw),)
    xs = [x]
elif fn == "qk":
    xs = [torch.randn(2, 4096, h, 128, generator=g).to(dt).requires_grad_(grad) for h in (32, 8)]
    rotate = lambda t: rk.apply_rope_qk(t[0], t[1], cos, sin, **kw)
else:
    xs = [torch.randn(2, 4096, 32, 128, generator=g).to(dt).requires_grad_(grad)]
    rotate = lambda t: (rk.apply_rope(t[0], cos, sin, **kw),)
def call():
    ins = [x * 1 for x in xs] if (grad and inplace) else xs  # autograd rotates only a non-leaf in place
    outs = rotate(ins)
    if grad:
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
if grad:  # torch's own first backward imports sympy (~2 s, any program pays it): not ropekit's first call
    w = torch.ones(2, requires_grad=True); torch.autograd.backward([w * 2], [torch.ones(2)])
t = time.perf_counter(); call(); first = time.perf_counter() - t
state = cpu.status()["native"]["state"]
times = []
for _ in range(5):
    t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
print(json.dumps(dict(first=first, steady=sorted(times)[2], state_at_first=state,
                      state_after=cpu.status()["native"]["state"])))
"""

# (function, dtype, layout, in place, with grad)
VARIANTS = [
    ("rope", "float32", "half", False, False),
    ("rope", "float32", "half", True, False),
    ("rope", "bfloat16", "half", False, False),
    ("rope", "bfloat16", "half", True, False),
    ("qk", "float32", "half", False, False),
    ("qk", "float32", "half", True, False),
    ("qk", "bfloat16", "half", False, False),
    ("qk", "bfloat16", "interleaved", True, False),
    ("qk", "float16", "interleaved", False, False),
    ("qkv", "float32", "half", False, False),
    ("qkv", "bfloat16", "half", True, False),
    ("qk", "float32", "half", False, True),
    ("qk", "bfloat16", "half", False, True),
    ("rope", "float32", "half", True, True),
    ("qkv", "float32", "half", False, True),
]

WARM_UP = "import ropekit as rk, ropekit.apply, ropekit.kernels.ops, ropekit.tables"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="an empty native-kernel cache for every process")
    ap.add_argument("--no-bytecode", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as the env sets it")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="ropekit-first-call-")
    os.makedirs(out, exist_ok=True)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not args.no_bytecode:  # as installed: bytecode written once, before any timed process
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="ropekit-pycache-")
        subprocess.run([sys.executable, "-c", WARM_UP], env=env, check=True)
    cache = "cold" if args.cold else "warm"
    print(f"load average {os.getloadavg()}, cache {cache}, bytecode {'no' if args.no_bytecode else 'yes'}")
    rows = []
    for fn, dtype, layout, inplace, grad in VARIANTS:
        if args.cold:
            env["ROPEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ropekit-cache-")
        argv = [sys.executable, "-c", CHILD, fn, dtype, layout, str(int(inplace)), str(int(grad))]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(call=fn, dtype=dtype, layout=layout, inplace=inplace, grad=grad, cache=cache)
        r["ratio"] = r["first"] / r["steady"]
        rows.append(r)
        print(
            f"{fn:4s} {dtype:9s} {layout:11s} {'in place' if inplace else 'out':8s} {'grad' if grad else '':4s}"
            f"  first {r['first'] * 1e3:8.1f} ms  steady {r['steady'] * 1e3:8.1f} ms  {r['ratio']:5.2f}x"
            f"  (native: {r['state_at_first']})"
        )
    print(f"worst first / steady: {max(r['ratio'] for r in rows):.2f}x; load average {os.getloadavg()}")
    path = os.path.join(out, f"first_call_{cache}.csv")
    from ropekit.bench import write_csv  # here: the parent stays torch-free while it times fresh processes

    write_csv(rows, path)  # atomic, the benchmarks' one CSV writer
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
