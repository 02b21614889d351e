"""Checkpoint conversion throughput and peak memory, side by side with `cp -r` of the same files.

Generates a ~2 GB Llama-shaped bf16 checkpoint (several safetensors shards) in a temporary
directory, then alternates `cp -r SRC X` and `ropekit convert SRC Y ...` (each in its own process,
so peak RSS is the converter's own, interpreter and torch included) for a few repeats, and reports
median wall times, throughput ratio vs cp, and peak RSS against the goal 2 x largest tensor + 300 MB.
The ratio that counts is the whole process (what a user waits for); the converter's own timer is
shown next to it.  Each case also says whether the process imported torch (none of these
should: .pth files are read and written as bytes; --verify would).  ropekit's modules are
byte-compiled first, as `pip install` does: otherwise every run would pay for compiling them (PYTHONDONTWRITEBYTECODE).

    python benchmarks/convert.py [--gb 2] [--repeats 3] [--dir /tmp]

Prints a table; writes benchmarks/results/NAME.csv (+ NAME.png when matplotlib is there; NAME is
--name, default "convert").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This process stays small (no torch): a child's peak RSS (os.wait4) counts the pages it inherits
# at fork, so the checkpoint is generated in a child process too.


def generate(path: Path, gb: float, shards: int) -> tuple[int, int]:
    """A Llama-like checkpoint of about `gb` GB: hidden 2048, 16 heads, 4 kv heads, head_dim 128."""
    import torch
    from safetensors.torch import save_file

    hidden, heads, kv, hd, ffn, vocab = 2048, 16, 4, 128, 5632, 32000
    per_layer = 2 * (2 * hidden * heads * hd + 2 * hidden * kv * hd + 3 * hidden * ffn + 2 * hidden)
    fixed = 2 * (2 * vocab * hidden + hidden)
    layers = max(1, round((gb * 1e9 - fixed) / per_layer))
    names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [
            (p + "self_attn.q_proj.weight", (heads * hd, hidden)),
            (p + "self_attn.k_proj.weight", (kv * hd, hidden)),
            (p + "self_attn.v_proj.weight", (kv * hd, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, heads * hd)),
            (p + "mlp.gate_proj.weight", (ffn, hidden)),
            (p + "mlp.up_proj.weight", (ffn, hidden)),
            (p + "mlp.down_proj.weight", (hidden, ffn)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    names += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    path.mkdir(parents=True)
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hd,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    per_shard = -(-len(names) // shards)
    weight_map, total, largest = {}, 0, 0
    g = torch.Generator().manual_seed(0)
    for j in range(shards):
        chunk = names[j * per_shard : (j + 1) * per_shard]
        f = f"model-{j + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {n: torch.randn(s, generator=g, dtype=torch.float32).to(torch.bfloat16) for n, s in chunk}
        save_file(tensors, path / f, metadata={"format": "pt"})
        for n, t in tensors.items():
            weight_map[n] = f
            total += t.numel() * 2
            largest = max(largest, t.numel() * 2)
        del tensors
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return total, largest


def run_timed(cmd: list[str], env=None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes of that process, stderr).  Dirty pages of earlier runs are
    flushed first so that no run pays for another's writeback."""
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_maxrss * 1024, err


PROBE = """
import runpy, sys
sys.argv = ["ropekit"] + sys.argv[1:]
try:
    runpy.run_module("ropekit", run_name="__main__")
finally:
    print("torch" in sys.modules, file=sys.stderr)
"""


def imports_torch(cmd_args: list[str], env) -> bool:
    """Does `ropekit ARGS` import torch?  (one extra run, output thrown away afterwards)"""
    out = subprocess.run([sys.executable, "-c", PROBE, *cmd_args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"probe failed:\n{out.stderr}")
    return out.stderr.strip().splitlines()[-1] == "True"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    xs = range(len(rows))
    names = [r["case"] + ("\n(imports torch)" if float(r.get("imports_torch", 1)) else "\n(no torch)") for r in rows]
    a.bar([x - 0.27 for x in xs], [r["cp_gbps"] for r in rows], 0.27, label="cp -r")
    a.bar(
        list(xs), [r["bytes"] / float(r["convert_inner_s"]) / 1e9 for r in rows], 0.27, label="convert (its own timer)"
    )
    a.bar([x + 0.27 for x in xs], [r["convert_gbps"] for r in rows], 0.27, label="convert, whole process")
    a.set_xticks(list(xs), names, fontsize=8)
    a.set_ylabel("GB/s (median)")
    a.set_ylim(0, 1.3 * max(r["cp_gbps"] for r in rows))  # room for the legend
    a.legend(fontsize=8, ncol=2)
    b.bar(xs, [float(r["peak_rss_mb"]) for r in rows], 0.5, label="peak RSS")
    b.axhline(float(rows[0]["import_torch_rss_mb"]), color="gray", ls=":", label="python + import torch alone")
    b.axhline(float(rows[0]["rss_goal_mb"]), color="k", ls="--", label="goal: 2 x largest tensor + 300 MB")
    b.set_xticks(list(xs), names, fontsize=8)
    b.set_ylabel("MB")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="convert", help="file name of the CSV / PNG (without suffix)")
    ap.add_argument("--plot-only", metavar="CSV", help="redraw the PNG of an earlier run's CSV and exit")
    ap.add_argument("--generate", help=argparse.SUPPRESS)  # internal: child process that writes the checkpoint
    args = ap.parse_args()
    if args.generate:
        print(json.dumps(generate(Path(args.generate), args.gb, args.shards)))
        return 0
    if args.plot_only:
        with open(args.plot_only, newline="") as f:
            rows = [{k: (v if k == "case" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
        plot(rows, Path(args.plot_only).with_suffix(".png"))
        return 0

    free = shutil.disk_usage(args.dir).free
    need = 3.5 * args.gb * 1e9
    print(f"free space in {args.dir}: {free / 1e9:.1f} GB (need ~{need / 1e9:.1f} GB)")
    if free < need:
        print("not enough disk space; pass --dir or a smaller --gb", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ropekit-bench-convert-", dir=args.dir))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    rk = [sys.executable, "-m", "ropekit", "convert"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "ropekit")], check=True)
    rows = []
    try:
        src = work / "hf"
        t0 = time.perf_counter()
        gen = subprocess.run(
            [sys.executable, __file__, "--generate", str(src), "--gb", str(args.gb), "--shards", str(args.shards)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        total, largest = json.loads(gen.stdout)
        print(
            f"generated {total / 1e9:.2f} GB in {args.shards} shards ({time.perf_counter() - t0:.1f} s); "
            f"largest tensor {largest / 1e6:.0f} MB"
        )
        meta = work / "meta"
        subprocess.run(
            rk + [str(src), str(meta), "--to", "meta", "--no-progress"], env=env, check=True, capture_output=True
        )

        # the fixed cost every ropekit process pays before converting anything: Python + torch
        starts = [run_timed([sys.executable, "-c", "import torch"]) for _ in range(args.repeats)]
        startup_s = statistics.median(w for w, _, _ in starts)
        startup_rss = max(r for _, r, _ in starts)
        print(f"python -c 'import torch': {startup_s:.2f} s, peak RSS {startup_rss / 1e6:.0f} MB")

        cases = [
            ("hf half -> hf interleaved", src, ["--layout", "interleaved"]),
            ("hf -> meta", src, ["--to", "meta"]),
            ("meta -> hf", meta, ["--to", "hf"]),
        ]
        for label, source, extra in cases:
            cp_t, cv_t, cv_inner, rss = [], [], [], []
            for _ in range(args.repeats):
                out = work / "out"
                wall, _, _ = run_timed(["cp", "-r", str(source), str(out)])
                cp_t.append(wall)
                shutil.rmtree(out)
                wall, peak, err = run_timed(rk + [str(source), str(out), "--no-progress"] + extra, env)
                m = re.search(r"MiB in ([0-9.]+) s", err)
                cv_t.append(wall)
                cv_inner.append(float(m.group(1)) if m else float("nan"))
                rss.append(peak)
                shutil.rmtree(out)
            nbytes = dir_bytes(source)
            torch_used = imports_torch(["convert", str(source), str(work / "probe"), "--no-progress"] + extra, env)
            shutil.rmtree(work / "probe")
            load = os.getloadavg()[0]  # other work on the machine skews both sides; say how much
            row = {
                "case": label,
                "bytes": nbytes,
                "cp_s": statistics.median(cp_t),
                "convert_s": statistics.median(cv_t),
                "convert_inner_s": statistics.median(cv_inner),
                "startup_s": startup_s,
                "peak_rss_mb": max(rss) / 1e6,
                "import_torch_rss_mb": startup_rss / 1e6,
                "largest_tensor_mb": largest / 1e6,
                "rss_goal_mb": (2 * largest + 300e6) / 1e6,
                "cp_s_min": min(cp_t),
                "convert_s_min": min(cv_t),
                "convert_inner_s_min": min(cv_inner),
                "loadavg_1m": load,
                "imports_torch": int(torch_used),
                "cpus": os.cpu_count(),
            }
            row["cp_gbps"] = nbytes / row["cp_s"] / 1e9
            row["convert_gbps"] = nbytes / row["convert_s"] / 1e9
            row["ratio_vs_cp"] = row["cp_s"] / row["convert_s"]
            row["ratio_vs_cp_inner"] = row["cp_s"] / row["convert_inner_s"]
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"{'case':26s} {'GB':>5s} {'cp s':>6s} {'conv s':>7s} {'(inner)':>8s} {'cp GB/s':>8s} {'conv GB/s':>9s} "
        f"{'x cp':>5s} {'x cp inner':>10s} {'peak RSS MB':>11s} {'torch RSS':>9s} {'goal MB':>8s} {'torch':>5s}"
    )
    for r in rows:
        print(
            f"{r['case']:26s} {r['bytes'] / 1e9:5.2f} {r['cp_s']:6.2f} {r['convert_s']:7.2f} "
            f"{r['convert_inner_s']:8.2f} "
            f"{r['cp_gbps']:8.2f} {r['convert_gbps']:9.2f} {r['ratio_vs_cp']:5.2f} {r['ratio_vs_cp_inner']:10.2f} "
            f"{r['peak_rss_mb']:11.0f} {r['import_torch_rss_mb']:9.0f} {r['rss_goal_mb']:8.0f} "
            f"{'yes' if r['imports_torch'] else 'no':>5s}"
        )
    loads = ", ".join(f"{r['loadavg_1m']:.1f}" for r in rows)
    print(
        f"load average (1 min) after each case: {loads} on {rows[0]['cpus']} CPUs; "
        f"best of {args.repeats}: "
        + "; ".join(
            f"{r['case']}: cp {r['cp_s_min']:.2f} s, convert {r['convert_s_min']:.2f} s "
            f"(inner {r['convert_inner_s_min']:.2f} s)"
            for r in rows
        )
    )
    print(
        "x cp = cp time / convert time (>= 0.8 is the goal); conv s = the whole `ropekit convert` process "
        f"(python, imports, and `import torch` where the case needs it: {rows[0]['startup_s']:.2f} s here); "
        "inner = the "
        "converter's own timer (open, plan, stream, rename); torch RSS = peak RSS of `python -c 'import torch'` alone; "
        "torch = whether the conversion imported torch"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / f"{args.name}.png")
    print(f"saved {out / (args.name + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
