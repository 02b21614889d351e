"""Which of a transformers family's rotary modules belongs to a config, and whether it is a 1-D RoPE.

``measured`` measures a family from its own modeling code; before it calls anything it needs the
family's language-model rotary class, the (sub-)config that class is built from, and the cases a
RopeSpec cannot describe at all, each refused with the exact reason:

* composite configs whose transformer stacks each carry their own RoPE (BLT's encoder, global
  transformer, decoder and patcher): one spec per sub-config, so the caller names the sub-config;
* image rotaries whose positions are not token indices (2-D grids, normalized float coordinates,
  axial height/width frequencies repeated per axis).

>>> from transformers import LlamaConfig
>>> cls, cfg = pick_rotary(LlamaConfig(hidden_size=64, num_attention_heads=4))
>>> cls.__name__
'LlamaRotaryEmbedding'
"""

from __future__ import annotations

import functools
import importlib
import inspect

from ..errors import RopeConfigError

__all__ = ["rotary_classes", "pick_rotary", "rope_sub_configs", "image_rotary_reason", "check_rope_sub_configs"]

#: rotary classes of other towers (images, audio, diffusion heads): 2D / other position schemes,
#: not the language model's
_OTHER_TOWERS = ("Vision", "Audio", "DiT", "Talker", "Video")

#: image rotaries whose class name does not say so, and what their positions are (read from
#: each family's modeling code in transformers 5.24); a RopeSpec rotates by one integer token
#: position per head, with inv_freq[i] = base ** (-2i / rotary_dim)
_IMAGE_POSITIONS = {
    "EfficientLoFTRRotaryEmbedding": "2-D (row, column) positions of the aggregated feature grid, derived from "
    "the feature map's height and width (its forward takes no position ids)",
    "EomtDinov3RotaryEmbedding": "2-D normalized float patch-centre coordinates in [-1, 1], angle "
    "2*pi*coordinate*inv_freq, jittered and rescaled in training (its forward takes pixel values, no position ids)",
    "MLCDRotaryEmbedding": "axial 2-D (height, width) positions: the same head_dim/4 frequencies repeated for "
    "each axis, one half of the pairs per axis",
    "Sam3ViTRotaryEmbedding": "axial 2-D (height, width) positions: the same head_dim/4 frequencies repeated "
    "for each axis, one half of the pairs per axis",
}


def _modeling_module_of(config_class: type):
    """``transformers.models.X.modeling_X`` for a config class defined in ``...configuration_X``."""
    name = config_class.__module__
    if ".configuration_" not in name:
        return None
    try:
        return importlib.import_module(name.replace(".configuration_", ".modeling_"))
    except ImportError:
        return None


def _config_class_of(cls) -> type | None:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    for param in params.values():
        if param.name not in ("self", "device"):
            return param.annotation if isinstance(param.annotation, type) else None
    return None


@functools.cache
def rotary_classes(config_class: type) -> tuple[tuple[type, type | None], ...]:
    """The ``(RotaryEmbedding class, config class it takes)`` pairs of the modeling module that
    goes with ``config_class``, leaving out other towers' (vision, audio ...) rotary classes."""
    module = _modeling_module_of(config_class)
    if module is None:
        return ()
    found = []
    for name, obj in vars(module).items():
        if not (isinstance(obj, type) and name.endswith("RotaryEmbedding") and obj.__module__ == module.__name__):
            continue
        if not any(tower in name for tower in _OTHER_TOWERS):
            found.append((obj, _config_class_of(obj)))
    return tuple(found)


def _text_of(config):
    get = getattr(config, "get_text_config", None)
    try:
        text = get() if callable(get) else config
    except Exception:  # some composite configs raise when they hold several decoders
        text = config
    return text


def rope_sub_configs(config) -> list[str]:
    """Sub-configs of a composite config without a language model of its own (no ``text_config``)
    that carry their own ``rope_parameters``: each is one transformer stack with its own RoPE.

    >>> from transformers import BltConfig
    >>> rope_sub_configs(BltConfig())
    ['patcher_config', 'encoder_config', 'decoder_config', 'global_config']
    """
    if _text_of(config) is not config or "num_attention_heads" in config.to_dict():
        return []
    names = []
    for name in getattr(type(config), "sub_configs", None) or {}:
        sub = getattr(config, name, None)
        if sub is not None and getattr(sub, "rope_parameters", None) and hasattr(sub, "num_attention_heads"):
            names.append(name)
    return names


def check_rope_sub_configs(config) -> None:
    """Refuse a composite config with several RoPE-carrying sub-configs, naming them."""
    names = rope_sub_configs(config)
    if len(names) > 1:
        family = getattr(config, "model_type", None)
        raise RopeConfigError(
            f"model_type={family!r} has one RoPE per sub-model ({', '.join(names)}), each with its own "
            f"rope_parameters; read one of them, e.g. from_config(config.{names[0]})"
        )


def pick_rotary(config):
    """The language model's rotary class for ``config`` and the (sub-)config it is built from
    (``(None, None)`` when its family has none)."""
    names = rope_sub_configs(config)
    if len(names) == 1:  # e.g. an audio encoder's config inside a composite one
        config = getattr(config, names[0])
    text = _text_of(config)
    classes = rotary_classes(type(text)) or rotary_classes(type(config))
    for cls, cfg_cls in classes:  # a class that takes exactly this config
        if cfg_cls is type(text):
            return cls, text
    # composite families annotate the rotary class with the composite config, yet build it from
    # the text config (transformers' own models pass config.text_config) or from one of their
    # sub-configs (BLT, Nemotron 3 diarization)
    for cls, cfg_cls in classes:
        if cfg_cls is None:
            continue
        parts = getattr(cfg_cls, "sub_configs", None) or {}
        if (
            cfg_cls is type(config)
            or isinstance(text, cfg_cls)
            or parts.get("text_config") is type(text)
            or type(text) in parts.values()
        ):
            return cls, text
    return None, None


def image_rotary_reason(cls) -> str | None:
    """Why ``cls`` is an image rotary a RopeSpec cannot describe (None for a 1-D token RoPE)."""
    return _IMAGE_POSITIONS.get(cls.__name__)
