"""Registers, spills, shared memory and fp64 instructions of every Triton kernel variant ropekit can
launch, compiled ahead of time for sm_80 and sm_90 (no GPU needed): a change that makes a kernel
spill, or pulls fp64 into the fp32 table path, shows in review.

    python benchmarks/triton_report.py                 # every variant (~260 compiles; cached by triton)
    python benchmarks/triton_report.py --covering      # the pairwise covering set the tests compile
    python benchmarks/triton_report.py --out DIR       # CSV into DIR (default: a fresh temp dir)

Run it without TRITON_INTERPRET (it is removed for the compiling processes anyway).
"""

import argparse
import csv
import json
import os
import sys
import tempfile

from ropekit.kernels import triton_aot


def _covering_names() -> list[str]:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "kernels"))
    from test_kernels_aot import COVERING

    return [v.name for v in COVERING]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--covering", action="store_true", help="only the covering set the test suite compiles")
    ap.add_argument("--out", default=None, help="folder for triton_report.csv (default: a fresh temp dir)")
    args = ap.parse_args()
    names = _covering_names() if args.covering else [v.name for v in triton_aot.variants()]
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [triton_aot.compile_in_subprocess(names, arch, env) for arch in triton_aot.ARCHS]
    rows = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"compiling failed:\n{err[-3000:]}")
        rows += json.loads(out.strip().splitlines()[-1])
    fields = ["variant", "arch", "ok", "registers", "spill_stores", "spill_loads", "shared_bytes", "fp64_ptx"]
    fields += ["fp64_sass", "fp_fusion", "sass_lines", "error"]
    print(f"| {' | '.join(fields[:-1])} |\n|{'---|' * (len(fields) - 1)}")
    for r in rows:
        print("| " + " | ".join(str(r.get(f, "")) for f in fields[:-1]) + " |")
    bad = [r for r in rows if not r["ok"]]
    for r in bad:
        print(f"FAILED {r['variant']} {r['arch']}: {r['error']}")
    folder = args.out or tempfile.mkdtemp(prefix="ropekit-triton-report-")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "triton_report.csv")
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
