"""Why `ropekit convert` pads new safetensors headers: kernel copies (copy_file_range, what `cp`
uses) of page-cache data run much faster when the destination offset has the same in-page
offset as the source.  Side by side in one run, on one generated file:

- `cp`: the coreutils command, for reference
- whole file: one copy_file_range from offset 0 to offset 0
- same in-page offset: the byte range from an unaligned start (1000) to the same offset
- shifted by 8: the same range written 8 bytes further (what an unpadded new header causes)
- 16 MiB pieces, same offset: the same range in tensor-sized calls

    python benchmarks/copy_alignment.py [--gb 1] [--repeats 5] [--dir /tmp]

Prints a table and writes benchmarks/results/copy_alignment.csv (medians).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy(src: str, dst: str, start: int, end: int, shift: int, piece: int | None) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        pos = start
        while pos < end:
            stop = end if piece is None else min(end, pos + piece)
            while pos < stop:
                pos += os.copy_file_range(s.fileno(), d.fileno(), stop - pos, pos, pos + shift)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ropekit-bench-align-", dir=args.dir))
    try:
        src = str(work / "src.bin")
        size = int(args.gb * 1e9)
        with open(src, "wb") as f:
            chunk = os.urandom(1 << 24)
            for _ in range(size // len(chunk) + 1):
                f.write(chunk)
        size = os.path.getsize(src)
        dst = str(work / "dst.bin")
        cases = {
            "cp": None,
            "whole file (0 -> 0)": (0, size, 0, None),
            "same in-page offset (1000 -> 1000)": (1000, size, 0, None),
            "shifted by 8 (1000 -> 1008)": (1000, size, 8, None),
            "16 MiB pieces, same offset": (1000, size, 0, 1 << 24),
        }
        times: dict[str, list[float]] = {c: [] for c in cases}
        for _ in range(args.repeats):
            for case, how in cases.items():  # interleaved, so drift in machine load hits all alike
                if os.path.exists(dst):
                    os.unlink(dst)
                subprocess.run(["sync"], check=True)
                t0 = time.perf_counter()
                if how is None:
                    subprocess.run(["cp", src, dst], check=True)
                else:
                    copy(src, dst, *how)
                times[case].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for case, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "case": case,
                "bytes": size,
                "median_s": med,
                "min_s": min(ts),
                "gbps": size / med / 1e9,
                "loadavg_1m": os.getloadavg()[0],
            }
        )
    base = rows[0]["median_s"]
    print(f"{'case':38s} {'median s':>9s} {'GB/s':>6s} {'x cp':>6s}")
    for r in rows:
        print(f"{r['case']:38s} {r['median_s']:9.3f} {r['gbps']:6.2f} {base / r['median_s']:6.2f}")
    print(
        f"{size / 1e9:.2f} GB, median of {args.repeats}; "
        f"load average {rows[-1]['loadavg_1m']:.1f} on {os.cpu_count()} CPUs"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "copy_alignment.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"saved {out / 'copy_alignment.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
