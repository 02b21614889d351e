"""installed_transformers: the RoPE the installed transformers would run for a config, measured.

No table of releases: the family's own modeling code is imported from the installed transformers,
its rotary module is built from the config (no weights loaded) and, with the family's
``apply_rotary_pos_emb``, wrapped as a black box ``fn(x[n, head_dim], positions[n])`` for
``ropekit.fingerprint``.  Whatever that release does with the config — keys it ignores, rules of its
own — is in the measurement.  Releases whose rotary module takes ``config`` (4.45+) and older ones
that build it inside the attention module (4.3x) are both handled.

>>> fn, head_dim, version = transformers_rope_fn({"model_type": "llama", "hidden_size": 64,
...                                               "num_attention_heads": 4})
>>> import ropekit as rk
>>> rk.fingerprint(fn, head_dim, max_position=2048).spec.describe()
'half r=16/16 base=10000'
"""

from __future__ import annotations

import importlib
import inspect
import os

import torch

from ..errors import RopeConfigError, require

__all__ = ["transformers_rope_fn", "transformers_version"]


def transformers_version() -> str:
    return require("transformers", "hf").__version__


def _config_object(config):
    transformers = require("transformers", "hf")
    if isinstance(config, (str, os.PathLike)):
        from .weights import read_json

        path = os.fspath(config)
        config = read_json(os.path.join(path, "config.json") if os.path.isdir(path) else path)
    if isinstance(config, dict):
        data = dict(config)
        model_type = data.pop("model_type", None)
        if not isinstance(model_type, str):
            raise RopeConfigError("config has no model_type: the installed transformers cannot build it")
        try:
            return transformers.AutoConfig.for_model(model_type, **data)
        except (ValueError, KeyError, TypeError) as exc:
            raise RopeConfigError(
                f"transformers {transformers.__version__} cannot build model_type={model_type!r}: {str(exc)[:200]}"
            ) from None
    return config


def _family_module(cfg):
    model_type = getattr(cfg, "model_type", "")
    name = model_type.replace("-", "_")
    try:
        return importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    except ImportError as exc:
        raise RopeConfigError(f"the installed transformers has no modeling code for {model_type!r} ({exc})") from None


def _rotary_module(module, cfg):
    classes = [c for n, c in vars(module).items() if n.endswith("RotaryEmbedding") and isinstance(c, type)]
    base = [c for c in classes if not any(w in c.__name__ for w in ("Linear", "Dynamic", "Yarn", "LongRope"))]
    if not base:
        raise RopeConfigError(f"{module.__name__} defines no rotary embedding module")
    cls = base[0]
    if "config" in inspect.signature(cls.__init__).parameters:
        return cls(config=cfg)
    # 4.3x: the attention module picks (and builds) the scaled variant from the config
    attention = next(
        (c for n, c in vars(module).items() if n.endswith("Attention") and isinstance(c, type) and "Flash" not in n),
        None,
    )
    if attention is None:
        raise RopeConfigError(f"{module.__name__}: no attention module to build the rotary embedding from")
    return attention(cfg, layer_idx=0).rotary_emb


def transformers_rope_fn(config):
    """(fn, head_dim, version): the installed transformers' rotary module and apply function for
    ``config`` (a dict, a config.json path or model directory, or a PretrainedConfig) as a black box."""
    transformers = require("transformers", "hf")
    cfg = _config_object(config)
    module = _family_module(cfg)
    apply = getattr(module, "apply_rotary_pos_emb", None)
    if apply is None:
        raise RopeConfigError(f"{module.__name__} has no apply_rotary_pos_emb")
    with torch.device("cpu"):
        rotary = _rotary_module(module, cfg).eval()
    takes_ids = "position_ids" in inspect.signature(rotary.forward).parameters
    apply_takes_ids = "position_ids" in inspect.signature(apply).parameters
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def fn(x, positions):
        q = x.float()[None, None]  # [batch 1, heads 1, n, head_dim]
        with torch.no_grad():
            if takes_ids:
                cos, sin = rotary(q, positions[None])
                y, _ = apply(q, q, cos, sin)
            else:  # 4.3x: full tables up to the longest position, gathered by position_ids
                cos, sin = rotary(q, seq_len=int(positions.max()) + 1)
                y, _ = apply(q, q, cos, sin, positions[None]) if apply_takes_ids else apply(q, q, cos, sin)
        return y[0, 0].to(x.dtype)

    return fn, int(head_dim), transformers.__version__
