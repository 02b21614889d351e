"""Tiny Llama-shaped checkpoints written with the safetensors library and torch.save (never with
ropekit), and helpers to read them back, shared by the conversion tests."""

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

H, KV, D, HIDDEN, LAYERS, FFN, VOCAB = 4, 2, 8, 32, 2, 48, 50
ROOT = Path(__file__).resolve().parents[1]
#: Llama 3.1's RoPE as its config.json states it (5.x rope_parameters form)
LLAMA31_ROPE = {
    "rope_theta": 500000.0,
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def hf_tensors(dtype=torch.bfloat16, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    t = {
        "model.embed_tokens.weight": r(VOCAB, HIDDEN),
        "model.norm.weight": r(HIDDEN),
        "lm_head.weight": r(VOCAB, HIDDEN),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = r(H * D, HIDDEN)
        t[p + "self_attn.k_proj.weight"] = r(KV * D, HIDDEN)
        t[p + "self_attn.v_proj.weight"] = r(KV * D, HIDDEN)
        t[p + "self_attn.o_proj.weight"] = r(HIDDEN, H * D)
        if bias:
            t[p + "self_attn.q_proj.bias"] = r(H * D)
            t[p + "self_attn.k_proj.bias"] = r(KV * D)
        t[p + "mlp.gate_proj.weight"] = r(FFN, HIDDEN)
        t[p + "mlp.up_proj.weight"] = r(FFN, HIDDEN)
        t[p + "mlp.down_proj.weight"] = r(HIDDEN, FFN)
        t[p + "input_layernorm.weight"] = r(HIDDEN)
        t[p + "post_attention_layernorm.weight"] = r(HIDDEN)
    return t


def hf_config(**over):
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": H,
        "num_key_value_heads": KV,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
    }
    cfg.update(over)
    return cfg


def make_hf_dir(path: Path, tensors=None, n_shards=3, **config_over) -> Path:
    tensors = tensors if tensors is not None else hf_tensors()
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(hf_config(**config_over), indent=2))
    (path / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    names = list(tensors)
    chunks = [names[i::n_shards] for i in range(n_shards)]
    weight_map = {}
    for j, chunk in enumerate(chunks):
        f = f"model-{j + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: tensors[n] for n in chunk}, path / f, metadata={"format": "pt"})
        weight_map.update({n: f for n in chunk})
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    return path


def read_all(path: Path) -> dict:
    """Every tensor of a transformers dir or a safetensors file, read with the safetensors library."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(f, "pt") as sf:
            for n in sf.keys():
                out[n] = sf.get_tensor(n)
    return out


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bytes(a.contiguous().view(-1).view(torch.uint8).numpy())
        == bytes(b.contiguous().view(-1).view(torch.uint8).numpy())
    )


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(str(p.relative_to(path.parent)).encode())
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def quiet(**kw):
    return dict(progress=False, log=lambda s: None, **kw)


# ---------------------------------------------------------------------------------------------
# reading and streaming writing
# ---------------------------------------------------------------------------------------------


def files_of(path: Path) -> dict:
    """{relative name: bytes} of every file under a directory (or of one file)."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
