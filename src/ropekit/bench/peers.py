"""The implementations measured against ropekit, each called with its tables in its own native
form: the CPU providers (ropekit, transformers eager and compiled, Meta's complex form,
rotary-embedding-torch, torchtune, LitGPT) and the GPU peers (flash-attn, Liger, FlashInfer).
One home for both tables: ``ropekit bench`` and benchmarks/gpu_run.py use them."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from .shapes import BASE, D, Shape, hf_tables, make_inputs

__all__ = ["meta_rotate", "cpu_providers", "PEERS", "MISSING", "function_from_file", "peer_providers", "gpu_peers"]


def meta_rotate(xq, xk, freqs_cis):
    """Meta's complex-number form (bshd, interleaved pairs), written from the formula."""

    def one(x):
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(z * freqs_cis).flatten(3).type_as(x)

    return one(xq), one(xk)


def cpu_providers(shape: Shape, dtype: torch.dtype) -> dict[str, tuple[Callable[[], object], str]]:
    """name -> (zero-argument call, what ran) for one shape and dtype."""
    import ropekit as rk

    q, k, pos, cos, sin = make_inputs(shape, dtype)
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
        ch, sh = hf_tables(cos, sin, pos, dtype)
        out["hf eager"] = (lambda: apply_rotary_pos_emb(qh, kh, ch, sh), "transformers apply_rotary_pos_emb")
        compiled = torch.compile(apply_rotary_pos_emb)
        out["hf compiled"] = (lambda: compiled(qh, kh, ch, sh), "torch.compile(apply_rotary_pos_emb)")
    freqs_cis = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))[pos].unsqueeze(2)  # [B, S, 1, D/2]
    out["meta complex"] = (lambda: meta_rotate(q, k, freqs_cis), "view_as_complex(x) * freqs_cis")
    out.update(peer_providers(q, k, pos, cos, sin))
    return out


#: the peers that may be missing (optional in the benchmark); a missing one is reported as such
PEERS = ("rotary-embedding-torch", "torchtune", "litgpt")
MISSING: dict[str, str] = {}


def function_from_file(path: str, name: str):
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
        apply_rope = function_from_file(os.path.join(spec.submodule_search_locations[0], "model.py"), "apply_rope")
        lc, ls = (torch.cat([t, t], -1)[pos].to(dtype) for t in (cos, sin))  # [B, S, D] in the model dtype
        out["litgpt"] = (
            lambda: (apply_rope(qh, lc, ls), apply_rope(kh, lc, ls)),
            "litgpt apply_rope(x, cos, sin), bhsd",
        )
    else:
        MISSING["litgpt"] = "not installed"
    return out


def gpu_peers(q, k, pos, cos, sin):
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
        ch, sh = hf_tables(cos, sin, pos, q.dtype)
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
