"""Side-by-side speed of RoPE implementations, measured in one run (``ropekit bench``).

RoPE is memory-bound: the floor is one read and one write of q and k.  So the CPU table reports
each implementation's time divided by the time of ``clone()`` of the same tensors (1.0 = as fast
as a copy), for Llama-3-8B heads (32 q / 8 kv heads, head_dim 128) at several sequence lengths
and one decode step (one new token for each of 32 sequences, each at its own position).

Providers (all rotate q and k by the same angles, out of place; the table says which ran):

* ``ropekit``: ``apply_rope_qk`` on bshd tensors, compact fp32 tables (the auto CPU path: the
  native C kernel once loaded, the lean eager rotation until then; no custom-op dispatch when no
  gradient is wanted);
  also in place;
* ``hf eager``: transformers' ``apply_rotary_pos_emb`` on bhsd tensors with duplicated tables cast
  to the input dtype, exactly as transformers' Llama calls it;
* ``hf compiled``: ``torch.compile`` of that function;
* ``meta complex``: Meta's reference form (pairs as complex numbers, times a complex64
  ``freqs_cis``, back to the input dtype), interleaved layout;
* ``rotary-embedding-torch``, ``torchtune``, ``litgpt`` when installed (optional; a missing one
  is reported as missing), each with its tables in its own native form.

The GPU part (``--gpu``, needs CUDA) measures GB/s and the fraction of the device's measured copy
bandwidth, forward and backward, against flash-attn, Liger and FlashInfer when installed, and
single-token decode latency.

>>> from ropekit.bench import CPU_SHAPES
>>> [s.name for s in CPU_SHAPES]
['S=512', 'S=4096', 'S=16384', 'decode B=32']
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Shape", "CPU_SHAPES", "GPU_TOKENS", "run_cpu", "run_gpu", "write_csv", "plot", "markdown"]

HQ, HKV, D, BASE = 32, 8, 128, 500000.0


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    seq: int
    decode: bool = False  # one token per sequence, each sequence at its own position


CPU_SHAPES = (
    Shape("S=512", 1, 512),
    Shape("S=4096", 1, 4096),
    Shape("S=16384", 1, 16384),
    Shape("decode B=32", 32, 1, True),
)
GPU_TOKENS = (8192, 16384, 32768, 65536)


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


def _time_round_robin(calls: dict[str, Callable[[], object]], min_time: float = 1.0, max_reps: int = 30) -> dict:
    """Seconds per call for each entry: two warm-up calls each (compilation happens there), then
    repetitions taken in turn (one call of each per round), so that load from other processes on
    a shared machine hits every provider alike.  Returns name -> (min, median); the ratios use
    the minimum, the least disturbed estimate of a memory-bound loop's cost."""
    for fn in calls.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    while min(map(len, times.values())) < 3 or (
        time.perf_counter() - start < min_time and len(times["clone"]) < max_reps
    ):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def time_cuda(fn: Callable[[], object], reps: int = 50) -> float:
    """Median seconds per call, by CUDA events, after warm-up (Triton compiles there)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# inputs and providers
# ---------------------------------------------------------------------------------------------


def _inputs(shape: Shape, dtype: torch.dtype, device: str = "cpu", requires_grad: bool = False):
    """q, k in bshd, explicit positions [B, S], and compact fp32 tables for them."""
    import ropekit as rk

    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(shape.batch, shape.seq, HQ, D, generator=g).to(device, dtype)
    k = torch.randn(shape.batch, shape.seq, HKV, D, generator=g).to(device, dtype)
    if shape.decode:  # sequence b is at position 1000 + 37 b: a KV-cache decode step
        pos = (1000 + 37 * torch.arange(shape.batch))[:, None]
    else:
        pos = torch.arange(shape.seq)[None].expand(shape.batch, shape.seq)
    pos = pos.to(device)
    spec = rk.RopeSpec(head_dim=D, base=BASE)
    cos, sin = rk.cos_sin(spec, int(pos.max()) + 1, device=device)
    if requires_grad:
        q.requires_grad_(True)
        k.requires_grad_(True)
    return q, k, pos, cos, sin


def _hf_tables(cos, sin, pos, dtype):
    # transformers' form: duplicated halves [B, S, D] gathered by position, cast to the input dtype
    return torch.cat([cos, cos], -1)[pos].to(dtype), torch.cat([sin, sin], -1)[pos].to(dtype)


def _meta_rotate(xq, xk, freqs_cis):
    """Meta's complex-number form (bshd, interleaved pairs), written from the formula."""

    def one(x):
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(z * freqs_cis).flatten(3).type_as(x)

    return one(xq), one(xk)


def cpu_providers(shape: Shape, dtype: torch.dtype) -> dict[str, tuple[Callable[[], object], str]]:
    """name -> (zero-argument call, what ran) for one shape and dtype."""
    import ropekit as rk

    q, k, pos, cos, sin = _inputs(shape, dtype)
    positions = pos if shape.decode else None
    from ropekit.kernels import cpu

    auto = "native C kernel" if cpu.ready(wait=True) else "lean eager (native kernel unavailable)"
    out: dict[str, tuple[Callable[[], object], str]] = {
        "clone": (lambda: (q.clone(), k.clone()), "q.clone(), k.clone()"),
        "ropekit": (lambda: rk.apply_rope_qk(q, k, cos, sin, positions=positions), f"apply_rope_qk, backend={auto}"),
    }
    # in place: no output allocation (on a CPU, a fresh output's page faults can cost more than
    # the rotation itself); rotating the same tensors again and again keeps their norms
    qi, ki = q.clone(), k.clone()
    out["ropekit in place"] = (
        lambda: rk.apply_rope_qk(qi, ki, cos, sin, positions=positions, inplace=True),
        f"apply_rope_qk(inplace=True), backend={auto}",
    )
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    except ImportError:
        apply_rotary_pos_emb = None
    if apply_rotary_pos_emb is not None:
        qh, kh = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()  # transformers: bhsd
        ch, sh = _hf_tables(cos, sin, pos, dtype)
        out["hf eager"] = (lambda: apply_rotary_pos_emb(qh, kh, ch, sh), "transformers apply_rotary_pos_emb")
        compiled = torch.compile(apply_rotary_pos_emb)
        out["hf compiled"] = (lambda: compiled(qh, kh, ch, sh), "torch.compile(apply_rotary_pos_emb)")
    freqs_cis = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))[pos].unsqueeze(2)  # [B, S, 1, D/2]
    out["meta complex"] = (lambda: _meta_rotate(q, k, freqs_cis), "view_as_complex(x) * freqs_cis")
    out.update(peer_providers(q, k, pos, cos, sin))
    return out


#: the peers that may be missing (optional in the benchmark); a missing one is reported as such
PEERS = ("rotary-embedding-torch", "torchtune", "litgpt")
MISSING: dict[str, str] = {}


def _function_from_file(path: str, name: str):
    """One top-level function of an installed module, without importing its package (LitGPT's
    ``litgpt/__init__`` imports lightning; its ``apply_rope`` needs only torch)."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read(), path)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)  # the installed code as is
    return namespace[name]


def peer_providers(q, k, pos, cos, sin) -> dict:
    """rotary-embedding-torch, torchtune and LitGPT, each with its tables in its own native form,
    rotating the same q and k (bshd) at the same positions; missing ones go to ``MISSING``."""
    import importlib.util

    out = {}
    dtype = q.dtype
    qh, kh = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()  # bhsd for two of them
    try:  # angles (not cos/sin) per position, interleaved pairs; cos/sin taken inside every call
        from rotary_embedding_torch import RotaryEmbedding, apply_rotary_emb

        freqs = RotaryEmbedding(dim=D, theta=BASE)(pos.to(torch.float32))[:, None]  # [B, 1, S, D]
        out["rotary-embedding-torch"] = (
            lambda: (apply_rotary_emb(freqs, qh), apply_rotary_emb(freqs, kh)),
            "rotary_embedding_torch.apply_rotary_emb(freqs, x), bhsd",
        )
    except ImportError as exc:
        MISSING["rotary-embedding-torch"] = str(exc)
    spec = importlib.util.find_spec("torchtune")
    if spec is not None and spec.submodule_search_locations:
        # torchtune's package __init__ checks for torchao; the module itself needs only torch
        path = os.path.join(spec.submodule_search_locations[0], "modules", "position_embeddings.py")
        loader = importlib.util.spec_from_file_location("torchtune_position_embeddings", path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        tt = module.RotaryPositionalEmbeddings(dim=D, max_seq_len=int(pos.max()) + 1, base=BASE)
        out["torchtune"] = (
            lambda: (tt(q, input_pos=pos), tt(k, input_pos=pos)),
            "torchtune RotaryPositionalEmbeddings(x, input_pos), bshd, fp32 cache",
        )
    else:
        MISSING["torchtune"] = "not installed"
    spec = importlib.util.find_spec("litgpt")
    if spec is not None and spec.submodule_search_locations:
        apply_rope = _function_from_file(os.path.join(spec.submodule_search_locations[0], "model.py"), "apply_rope")
        lc, ls = (torch.cat([t, t], -1)[pos].to(dtype) for t in (cos, sin))  # [B, S, D] in the model dtype
        out["litgpt"] = (
            lambda: (apply_rope(qh, lc, ls), apply_rope(kh, lc, ls)),
            "litgpt apply_rope(x, cos, sin), bhsd",
        )
    else:
        MISSING["litgpt"] = "not installed"
    return out


def run_cpu(
    shapes=CPU_SHAPES, dtypes=(torch.float32, torch.bfloat16), log: Callable[[str], None] = print
) -> list[dict]:
    """One row per (dtype, shape, provider): seconds per call (min and median of the rounds) and
    the ratio of the minimum to clone()'s."""
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            providers = cpu_providers(shape, dtype)
            timed = _time_round_robin({name: fn for name, (fn, _) in providers.items()})
            base = timed["clone"][0]
            for name, (_, what) in providers.items():
                best, median = timed[name]
                row = dict(
                    device="cpu",
                    dtype=str(dtype).replace("torch.", ""),
                    shape=shape.name,
                    provider=name,
                    what=what,
                    seconds=best,
                    median_seconds=median,
                    ratio_to_clone=best / base,
                )
                rows.append(row)
                log(
                    f"  {row['dtype']:9s} {shape.name:12s} {name:22s} {best * 1e3:9.3f} ms (median {median * 1e3:9.3f})"
                    f"  {row['ratio_to_clone']:6.2f}x clone"
                )
    return rows


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


def _gpu_peers(q, k, pos, cos, sin):
    """Installed peers, each as a call rotating q and k (bshd) in the half layout."""
    peers = {}
    try:
        from flash_attn.layers.rotary import apply_rotary_emb

        peers["flash-attn"] = lambda: (apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin))
    except ImportError:
        pass
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        qh, kh = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
        ch, sh = _hf_tables(cos, sin, pos, q.dtype)
        peers["liger"] = lambda: liger_rotary_pos_emb(qh, kh, ch, sh)
    except ImportError:
        pass
    try:
        import flashinfer

        T = q.shape[0] * q.shape[1]
        qf, kf = q.reshape(T, -1), k.reshape(T, -1)
        cache = torch.cat([cos, sin], -1).float().contiguous()
        flat = pos.reshape(-1).to(torch.int32)
        peers["flashinfer"] = lambda: flashinfer.rope.apply_rope_with_cos_sin_cache(
            flat, qf, kf, D, cache, is_neox=True
        )
    except (ImportError, AttributeError):
        pass
    return peers


def run_gpu(
    tokens=GPU_TOKENS, dtypes=(torch.bfloat16, torch.float16), log: Callable[[str], None] = print
) -> list[dict]:
    """GB/s (one read + one write of q and k) and % of measured copy bandwidth, forward and
    backward, ropekit vs installed peers; then single-token decode latency."""
    import ropekit as rk

    if not torch.cuda.is_available():
        raise RuntimeError("run_gpu needs a CUDA device")
    rows = []
    for dtype in dtypes:
        for n in tokens:
            shape = Shape(f"T={n}", 1, n)
            q, k, pos, cos, sin = _inputs(shape, dtype, "cuda", requires_grad=True)
            nbytes = 2 * (q.numel() + k.numel()) * q.element_size()
            copy = time_cuda(lambda: (q.detach().clone(), k.detach().clone()))
            yq, yk = rk.apply_rope_qk(q, k, cos, sin)
            gq, gk = torch.randn_like(yq), torch.randn_like(yk)
            calls = {
                ("copy", "fwd"): lambda: (q.detach().clone(), k.detach().clone()),
                ("ropekit", "fwd"): lambda: rk.apply_rope_qk(q.detach(), k.detach(), cos, sin),
                ("ropekit", "bwd"): lambda: torch.autograd.grad((yq, yk), (q, k), (gq, gk), retain_graph=True),
            }
            for name, fn in _gpu_peers(q.detach(), k.detach(), pos, cos, sin).items():
                calls[(name, "fwd")] = fn
            for (name, direction), fn in calls.items():
                try:
                    seconds = time_cuda(fn)
                except Exception as exc:  # a peer's API changed: report it, keep the others
                    log(f"  {name} {direction}: failed ({type(exc).__name__}: {exc})")
                    continue
                gbs = nbytes / seconds / 1e9
                rows.append(
                    dict(
                        device=torch.cuda.get_device_name(),
                        dtype=str(dtype).replace("torch.", ""),
                        shape=shape.name,
                        provider=f"{name} {direction}",
                        what="",
                        seconds=seconds,
                        ratio_to_clone=seconds / copy,
                        gb_per_s=gbs,
                        pct_of_copy=100 * copy / seconds,
                    )
                )
                log(
                    f"  {rows[-1]['dtype']:9s} {shape.name:8s} {name + ' ' + direction:18s} {gbs:8.0f} GB/s  {100 * copy / seconds:5.1f}% of copy"
                )
        # decode: one token per sequence, 32 sequences; latency per call
        q, k, pos, cos, sin = _inputs(Shape("decode", 32, 1, True), dtype, "cuda")
        seconds = time_cuda(lambda: rk.apply_rope_qk(q, k, cos, sin, positions=pos, inplace=True), reps=200)
        rows.append(
            dict(
                device=torch.cuda.get_device_name(),
                dtype=str(dtype).replace("torch.", ""),
                shape="decode B=32",
                provider="ropekit decode (in place)",
                what="",
                seconds=seconds,
                ratio_to_clone=float("nan"),
            )
        )
        log(f"  {rows[-1]['dtype']:9s} decode B=32 ropekit in place: {seconds * 1e6:.1f} us per call")
    return rows


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def write_csv(rows: list[dict], path: str) -> None:
    """Atomically (a temp file, then a rename): an interrupted run leaves no half-written CSV."""
    fields = []
    for row in rows:
        fields += [f for f in row if f not in fields]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def markdown(rows: list[dict]) -> str:
    """The CPU rows as a table: one line per (dtype, shape), one column per provider (x clone).

    >>> print(markdown([dict(dtype="float32", shape="S=4", provider="clone", seconds=1e-3, ratio_to_clone=1.0)]))
    | dtype | shape | clone (ms) |
    |---|---|---|
    | float32 | S=4 | 1.00x (1.000) |
    """
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    lines = [
        "| dtype | shape | " + " | ".join(f"{p} (ms)" for p in providers) + " |",
        "|---|---|" + "---|" * len(providers),
    ]
    for key in dict.fromkeys((r["dtype"], r["shape"]) for r in rows):
        cells = {r["provider"]: r for r in rows if (r["dtype"], r["shape"]) == key}
        line = [
            f"{cells[p]['ratio_to_clone']:.2f}x ({cells[p]['seconds'] * 1e3:.3f})" if p in cells else ""
            for p in providers
        ]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(line) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Bar chart of time / clone per shape, one panel per dtype (needs matplotlib)."""
    from .errors import require

    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != "clone"]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        shapes = list(dict.fromkeys(r["shape"] for r in rows if r["dtype"] == dtype))
        width = 0.8 / max(1, len(providers))
        for i, p in enumerate(providers):
            ys = [
                next(
                    (r["ratio_to_clone"] for r in rows if (r["dtype"], r["shape"], r["provider"]) == (dtype, s, p)), 0.0
                )
                for s in shapes
            ]
            ax.bar([j + i * width for j in range(len(shapes))], ys, width, label=p)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.2, color="k", lw=0.8, ls=":")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes)
        ax.set_yscale("log")
        ax.set_ylabel("time / clone() (log; 1 = a copy)")
        ax.set_title(f"RoPE q+k, Llama-3-8B heads, {dtype}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
