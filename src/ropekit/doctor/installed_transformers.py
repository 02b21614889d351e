"""installed_transformers: the RoPE the installed transformers would run for a config, measured.

No table of releases: the family's rotary module and apply function are found and built from the
config (no weights loaded) by ``ropekit.dialects.measured`` (its ``Probe``: the one place that
knows how to find them in a modeling module), and wrapped here as a black box
``fn(x[n, head_dim], positions[n])`` for ``ropekit.fingerprint``.  Whatever that release does with
the config — keys it ignores, rules of its own — is in the measurement.  Releases whose rotary
module does not take the config (before 4.48) build it inside the attention module: for those the
attention module of the family builds it here.

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


def _attention_built(cfg):
    """(rotary module, apply function) of a release whose rotary module does not take the config:
    the family's attention module builds it from the config (4.3x)."""
    module = _family_module(cfg)
    attention = next(
        (c for n, c in vars(module).items() if n.endswith("Attention") and isinstance(c, type) and "Flash" not in n),
        None,
    )
    apply = getattr(module, "apply_rotary_pos_emb", None)
    if attention is None or apply is None:
        raise RopeConfigError(f"{module.__name__}: no attention module and apply function to build the RoPE from")
    try:
        built = attention(cfg, layer_idx=0)
    except TypeError:  # releases whose attention modules take no layer index
        built = attention(cfg)
    return built.rotary_emb, apply


def _rotary_and_apply(cfg, layer_type=None):
    """The family's rotary module (built from ``cfg``) and apply function."""
    from ..dialects.measured import Probe, pick_rotary

    cls, _ = pick_rotary(cfg)
    if cls is None:  # rotary classes that do not take a config: an older release
        return _attention_built(cfg)
    probe = Probe(cfg, layer_type)
    if probe.image is not None:
        # fn(x, positions[n]) is a 1-D black box; these modules take the family's own patch inputs
        raise RopeConfigError(
            f"{probe.rotary_class.__name__} is an axial image rotary over a grid of patches: a 1-D fingerprint "
            "does not apply (ropekit's reading of it is measured from this module on a grid: spec.source)"
        )
    return probe.module, probe.apply_fn


def transformers_rope_fn(config, layer_type: str | None = None):
    """(fn, head_dim, version): the installed transformers' rotary module and apply function for
    ``config`` (a dict, a config.json path or model directory, or a PretrainedConfig) as a black box;
    ``layer_type``: which of a per-layer-type RoPE (Gemma 2/3 "sliding_attention" ...)."""
    transformers = require("transformers", "hf")
    cfg = _config_object(config)
    with torch.device("cpu"):
        rotary, apply = _rotary_and_apply(cfg, layer_type)
    rotary = rotary.eval()
    takes_ids = "position_ids" in inspect.signature(rotary.forward).parameters
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    apply_takes_ids = "position_ids" in inspect.signature(apply).parameters
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg  # a multimodal config's LM part
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads

    def fn(x, positions):
        q = x.float()[None, None]  # [batch 1, heads 1, n, head_dim]
        with torch.no_grad():
            if takes_ids:
                cos, sin = rotary(q, positions[None], **kwargs)
            else:  # 4.3x: full tables up to the longest position, gathered by position_ids
                cos, sin = rotary(q, seq_len=int(positions.max()) + 1)
            # partial rotary in releases whose attention slices the rotary dims itself (gpt_neox 4.x)
            rot = q[..., : cos.shape[-1]]
            extra = (positions[None],) if not takes_ids and apply_takes_ids else ()
            y, _ = apply(rot, rot, cos, sin, *extra)
        return torch.cat((y, q[..., cos.shape[-1] :]), -1)[0, 0].to(x.dtype)

    return fn, int(head_dim), transformers.__version__
