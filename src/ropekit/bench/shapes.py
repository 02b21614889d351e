"""What the benchmarks rotate: Llama-3-8B heads, the CPU shapes, the GPU token counts, and the
inputs (q, k, positions, compact tables) each provider starts from.

>>> from ropekit.bench.shapes import CPU_SHAPES, make_inputs
>>> q, k, pos, cos, sin = make_inputs(CPU_SHAPES[-1], __import__("torch").float32)
>>> tuple(q.shape), tuple(pos.shape)
((32, 1, 32, 128), (32, 1))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["HQ", "HKV", "D", "BASE", "Shape", "CPU_SHAPES", "GPU_TOKENS", "make_inputs", "hf_tables"]

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


def make_inputs(shape: Shape, dtype: torch.dtype, device: str = "cpu", requires_grad: bool = False):
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


def hf_tables(cos, sin, pos, dtype):
    # transformers' form: duplicated halves [B, S, D] gathered by position, cast to the input dtype
    return torch.cat([cos, cos], -1)[pos].to(dtype), torch.cat([sin, sin], -1)[pos].to(dtype)
