"""framework_readings: the RoPE LitGPT and transformers' GGUF loader would run for a checkpoint,
each measured through that framework's own code (nothing restated here).

- LitGPT: ``litgpt.Config`` from the directory's ``model_config.yaml``, LitGPT's own rope cache
  builder (``GPT.rope_cache`` on that config, no model built) and its ``apply_rope`` /
  ``apply_rope_interleave``, wrapped as a black box ``fn(x[n, head_dim], positions[n])``.
- GGUF: the config transformers' gguf loader derives from the file's metadata
  (``load_gguf_checkpoint(..., return_tensors=False)``, no tensors read), run through the family's
  modeling code; and the RoPE the metadata states (``rope.freq_base``, ``rope.dimension_count``,
  ``rope.scaling.*``) as a spec, to compare the two.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

from ..errors import RopeConfigError, require

__all__ = ["litgpt_rope_fn", "gguf_metadata_spec", "gguf_transformers_config"]


def litgpt_rope_fn(path):
    """(fn, head_dim, version): the installed LitGPT's RoPE for a LitGPT directory or its yaml."""
    litgpt = require("litgpt", "litgpt")
    from litgpt.config import Config
    from litgpt.model import GPT, apply_rope, apply_rope_interleave

    path = os.fspath(path)
    yaml = os.path.join(path, "model_config.yaml") if os.path.isdir(path) else path
    try:
        cfg = Config.from_file(yaml)
    except Exception as exc:  # LitGPT's own refusal, in one line
        raise RopeConfigError(f"{yaml}: LitGPT cannot read it ({type(exc).__name__}: {str(exc)[:200]})") from None
    r = cfg.rope_n_elem
    rotate = apply_rope_interleave if getattr(cfg, "rope_interleave", False) else apply_rope
    tables = {}

    def fn(x, positions):
        n = int(positions.max()) + 1
        if tables.get("n", 0) < n:  # LitGPT's cache for this many positions, built by LitGPT
            cos, sin = GPT.rope_cache(SimpleNamespace(config=cfg, max_seq_length=n))
            tables.update(n=n, cos=cos, sin=sin)
        cos, sin = tables["cos"][positions][:, None], tables["sin"][positions][:, None]
        rot = rotate(x[:, None, :r].float(), cos, sin)[:, 0]
        return torch.cat((rot, x[:, r:].float()), -1).to(x.dtype)

    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("litgpt")
    except PackageNotFoundError:
        installed = getattr(litgpt, "__version__", "(version unknown)")
    return fn, int(cfg.head_size), installed


def gguf_metadata_spec(meta: dict):
    """The RoPE a GGUF file's metadata states, as a half-layout RopeSpec (the layout llama.cpp's
    stored rows are in is a separate question: transformers' loader permutes them on load)."""
    from ..scaling import Linear, Yarn
    from ..spec import RopeSpec
    from .weights import geometry_from_gguf_metadata

    g = geometry_from_gguf_metadata(meta)
    arch = meta.get("general.architecture", "llama")
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    scaling = None
    if kind in (None, "none") or factor in (None, 1.0):
        scaling = None
    elif kind == "linear":
        scaling = Linear(factor=float(factor))
    elif kind == "yarn":
        orig = meta.get(f"{arch}.rope.scaling.original_context_length")
        scaling = Yarn(factor=float(factor), original_max_position_embeddings=int(orig))
    else:
        raise RopeConfigError(f"GGUF metadata {arch}.rope.scaling.type={kind!r}: not a scaling ropekit reads from GGUF")
    return RopeSpec(head_dim=g.head_dim, rotary_dim=g.rotary_dim, base=g.base, layout="half", scaling=scaling)


def gguf_transformers_config(path) -> dict:
    """The config dict transformers' gguf loader makes from the file's metadata (no tensors read)."""
    st = os.stat(path)
    return dict(_loader_config(os.path.realpath(path), st.st_mtime_ns, st.st_size))


@functools.cache
def _loader_config(path: str, mtime_ns: int, size: int) -> dict:
    """One parse per file version (the loader reads every metadata field: tens of seconds for a
    tokenizer-carrying file)."""
    require("transformers", "hf")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        parsed = load_gguf_checkpoint(path, return_tensors=False)
    except Exception as exc:  # the loader's own refusal (an architecture it does not support ...)
        raise RopeConfigError(f"{path}: transformers' gguf loader refuses it ({type(exc).__name__}: {exc})") from None
    return dict(parsed["config"])
