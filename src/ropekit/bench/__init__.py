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

from .peers import MISSING, PEERS, cpu_providers, gpu_peers, peer_providers
from .report import markdown, plot, write_csv
from .run import run_cpu, run_gpu
from .shapes import CPU_SHAPES, GPU_TOKENS, Shape
from .timing import time_cuda

__all__ = [
    "Shape",
    "CPU_SHAPES",
    "GPU_TOKENS",
    "run_cpu",
    "run_gpu",
    "write_csv",
    "plot",
    "markdown",
    "time_cuda",
    "cpu_providers",
    "peer_providers",
    "gpu_peers",
    "PEERS",
    "MISSING",
]
