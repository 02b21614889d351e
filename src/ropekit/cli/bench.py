"""``ropekit bench``: side-by-side RoPE speed in one run, printed as a table and saved as CSV + PNG.

examples:
    ropekit bench                         # CPU: time / clone() for ropekit, transformers, Meta
    ropekit bench --shapes S=4096 --dtypes float32
    ropekit bench --gpu                   # also the GPU table (needs CUDA): GB/s, % of copy
"""

from __future__ import annotations

import os

from ..errors import RopeError

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


#: ropekit.bench's CPU_SHAPES names, repeated so that building the parser does not import torch
#: (`ropekit convert` between safetensors files never needs it); a test checks they agree
SHAPE_NAMES = ("S=512", "S=4096", "S=16384", "decode B=32")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="side-by-side speed of RoPE implementations (CSV + PNG)",
        description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for speed_cpu.csv / .png and speed_gpu.csv (default: a fresh temporary folder, "
        "printed; nothing is written into the current directory unless asked)",
    )
    p.add_argument(
        "--shapes", default=",".join(SHAPE_NAMES), help="comma-separated CPU shapes (default: all: %(default)s)"
    )
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default: %(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for every provider (default: torch's). 1 gives stable figures on a "
        "busy machine, where a parallel loop waits whenever one of its threads is descheduled",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time CPU calls by wall clock (default) or by this thread's CPU time; with --threads 1 the "
        "CPU clock leaves out other processes' load on a shared machine",
    )
    p.add_argument("--gpu", action="store_true", help="also run the GPU benchmark (needs CUDA)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU table")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG chart")
    p.set_defaults(func=run)


def _parse(args):
    import torch

    from ..bench import CPU_SHAPES

    by_name = {s.name: s for s in CPU_SHAPES}
    shapes = []
    for name in filter(None, (s.strip() for s in args.shapes.split(","))):
        if name not in by_name:
            raise RopeError(f"--shapes: {name!r} is not one of {list(by_name)}")
        shapes.append(by_name[name])
    dtypes = []
    for name in filter(None, (s.strip() for s in args.dtypes.split(","))):
        if name not in DTYPES:
            raise RopeError(f"--dtypes: {name!r} is not one of {sorted(set(DTYPES))}")
        dtypes.append(getattr(torch, DTYPES[name]))
    return shapes, dtypes


def run(args) -> int:
    import torch

    from .. import bench

    shapes, dtypes = _parse(args)
    if args.threads is not None:
        if args.threads < 1:
            raise RopeError(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    if args.out is None:
        import tempfile

        args.out = tempfile.mkdtemp(prefix="ropekit-bench-")
    os.makedirs(args.out, exist_ok=True)
    print(f"results go to {os.path.abspath(args.out)}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    # other processes on the machine distort timings: say how busy it was
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {torch.backends.cpu.get_cpu_capability()}, "
        f"{os.cpu_count()} cores, load average {load}"
    )
    if not args.no_cpu:
        print(
            f"CPU: median of 3 runs (each the median of interleaved rounds), ms per call ({args.clock} clock), "
            "and its ratio to clone() of the same q and k in the same run (1.00x = a copy)"
        )
        rows = (
            bench.run_cpu(shapes, dtypes) if args.clock == "wall" else bench.run_cpu(shapes, dtypes, clock=args.clock)
        )
        for peer in bench.PEERS:
            if peer in bench.MISSING:
                print(f"peer {peer}: missing ({bench.MISSING[peer]})")
        for row in rows:
            row["threads"] = torch.get_num_threads()
        suffix = ("" if args.threads is None else f"_{args.threads}thread") + (
            "_cputime" if args.clock == "cpu" else ""
        )
        path = os.path.join(args.out, f"speed_cpu{suffix}.csv")
        bench.write_csv(rows, path)
        print("\n" + bench.markdown(rows) + "\n")
        print(f"wrote {path}")
        if not args.no_plot:
            png = os.path.join(args.out, f"speed_cpu{suffix}.png")
            bench.plot(rows, png)
            print(f"wrote {png}")
    if args.gpu:
        if not torch.cuda.is_available():
            raise RopeError("--gpu: no CUDA device is available")
        rows = bench.run_gpu()
        path = os.path.join(args.out, "speed_gpu.csv")
        bench.write_csv(rows, path)
        print(f"wrote {path}")
    return 0
