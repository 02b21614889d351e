"""Which of a transformers family's rotary modules belongs to a config, and whether it is a 1-D RoPE.

``measured`` measures a family from its own modeling code; before it calls anything it needs the
family's language-model rotary class, the (sub-)config that class is built from, and the cases a
RopeSpec cannot describe at all, each refused with the exact reason:

* composite configs whose transformer stacks each carry their own RoPE (BLT's encoder, global
  transformer, decoder and patcher): one spec per sub-config, so the caller names the sub-config;
* (image rotaries, whose positions are patch grids, are called by ``image_rotaries``).

>>> from transformers import LlamaConfig
>>> cls, cfg = pick_rotary(LlamaConfig(hidden_size=64, num_attention_heads=4))
>>> cls.__name__
'LlamaRotaryEmbedding'
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect

from ..errors import RopeConfigError

__all__ = [
    "OTHER_TOWERS",
    "rotary_classes",
    "pick_rotary",
    "rope_sub_configs",
    "check_rope_sub_configs",
    "SAMPLE_POSITIONS",
    "call_rotary",
    "compact_tables",
    "apply_function_of",
    "probe_scores",
    "one_thread",
    "no_rope_layer_types",
    "module_failed",
]

#: positions sampled: the first 32, then a spread up to a few thousand (cheap, and far enough
#: that a wrong frequency shows)
SAMPLE_POSITIONS = (*range(32), 100, 257, 1000, 2047)

#: rotary classes of other towers (images, audio, diffusion heads): 2D / other position schemes,
#: not the language model's
OTHER_TOWERS = ("Vision", "Audio", "DiT", "Talker", "Video")


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
def rotary_classes(config_class: type, towers: bool = False) -> tuple[tuple[type, type | None], ...]:
    """The ``(RotaryEmbedding class, config class it takes)`` pairs of the modeling module that
    goes with ``config_class``, leaving out other towers' (vision, audio ...) rotary classes
    unless ``towers``."""
    module = _modeling_module_of(config_class)
    if module is None:
        return ()
    found = []
    for name, obj in vars(module).items():
        if not (isinstance(obj, type) and name.endswith("RotaryEmbedding") and obj.__module__ == module.__name__):
            continue
        if towers or not any(tower in name for tower in OTHER_TOWERS):
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
    for cls, cfg_cls in rotary_classes(type(config), towers=True):
        if cfg_cls is type(config) and any(tower in cls.__name__ for tower in OTHER_TOWERS):
            return cls, config  # a tower's config with sub-configs of its own (DeepSeek-OCR 2's vision)
    names = rope_sub_configs(config)
    if len(names) == 1:  # e.g. an audio encoder's config inside a composite one
        config = getattr(config, names[0])
    text = _text_of(config)
    classes = rotary_classes(type(text)) or rotary_classes(type(config))
    for cls, cfg_cls in classes:  # a class that takes exactly this config
        if cfg_cls is type(text):
            return cls, text
    for cls, cfg_cls in rotary_classes(type(text), towers=True):  # a tower's own config (vision_config ...)
        if cfg_cls is type(text):
            return cls, text
    # composite families annotate the rotary class with the composite config, yet build it from
    # the text config (transformers' own models pass config.text_config) or from one of their
    # sub-configs (BLT, Nemotron 3 diarization; DeepSeek-OCR 2's vision encoder, a tower's part)
    towers = tuple(c for c in rotary_classes(type(text), towers=True) if c not in classes)
    for cls, cfg_cls in classes + towers:
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


# -- calling a family's own rotary module and apply function ------------------------------------


def call_rotary(module, layer_type, pos=None):
    """The module's (cos, sin) (or complex freqs_cis) at ``pos`` ([1, n] token positions, or
    [axes, 1, n] for mRoPE), flattened to one row per position."""
    import torch

    if pos is None:
        pos = torch.tensor([SAMPLE_POSITIONS], dtype=torch.int64)
    n = pos.shape[-1]
    x = torch.zeros(1, n, 8, dtype=torch.float32)
    params = inspect.signature(module.forward).parameters
    kwargs = {"layer_type": layer_type} if "layer_type" in params and layer_type is not None else {}
    with torch.no_grad():
        out = module(x, pos, **kwargs)
    if isinstance(out, torch.Tensor) and out.is_complex():  # Llama 4 / DeepSeek-V2: freqs_cis = cos + i sin
        out = out.reshape(n, -1)
        return out, None
    a, b = out
    return a.float().reshape(n, -1), b.float().reshape(n, -1)


def compact_tables(a, b):
    """(cos, sin) in compact form (one column per pair) and the module's table form."""
    import torch

    if b is None:
        return a.real.float(), a.imag.float(), "complex freqs_cis"

    if torch.all(a[0] == 0) and not torch.all(b[0] == 0):  # GPT-J returns (sin, cos)
        a, b = b, a
        order = "(sin, cos)"
    else:
        order = "(cos, sin)"
    w = a.shape[-1]
    if w % 2 == 0 and torch.equal(a[:, : w // 2], a[:, w // 2 :]) and torch.equal(b[:, : w // 2], b[:, w // 2 :]):
        return a[:, : w // 2], b[:, : w // 2], f"{order} duplicated by cat"
    if w % 2 == 0 and torch.equal(a[:, 0::2], a[:, 1::2]) and torch.equal(b[:, 0::2], b[:, 1::2]):
        return a[:, 0::2], b[:, 0::2], f"{order} repeated per column"
    return a, b, f"{order} compact"


def apply_function_of(module, complex_table: bool, config):
    """The family's q/k rotation function (the one its attention calls for the language model)."""
    names = ("apply_rotary_pos_emb", "apply_rotary_pos_emb_interleave")
    if getattr(config, "rope_interleave", False):  # DeepSeek-V3 style: the attention picks by this flag
        names = names[::-1]
    if complex_table:
        names = ("apply_rotary_emb",)
    for name in names:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def probe_scores(apply_fn, a, b, width, mrope_section, heads_last: bool = False):
    """q.k scores (q at every position, k at every position) from the family's apply function,
    called as its attention calls it: with the rotary module's outputs in the order it returns them
    (``heads_last``: q as [b, s, h, d] with [s, d] tables, as MLCD's vision apply takes them)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    # two heads: a function written for [b, s, h, d] cannot broadcast a [b, h, s, d] input, and back
    q = torch.randn(1, 2, a.shape[0], width, generator=gen)
    k = torch.randn(1, 2, a.shape[0], width, generator=gen)
    params = list(inspect.signature(apply_fn).parameters)
    with torch.no_grad():
        if heads_last:
            qr, kr = apply_fn(q.transpose(1, 2), k.transpose(1, 2), a, b)
            qr, kr = qr.transpose(1, 2), kr.transpose(1, 2)
        elif b is None:  # (xq, xk, freqs_cis): DeepSeek-V2 on [b, h, s, d], Llama 4 on [b, s, h, d]
            try:
                qr, kr = apply_fn(q, k, a[None])
            except RuntimeError:
                qr, kr = apply_fn(q.transpose(1, 2), k.transpose(1, 2), a[None])
                qr, kr = qr.transpose(1, 2), kr.transpose(1, 2)
        elif params[1:3] == ["sin", "cos"]:  # GPT-J style: one tensor [b, s, h, d] at a time
            qr = apply_fn(q.transpose(1, 2), a[None], b[None]).transpose(1, 2)
            kr = apply_fn(k.transpose(1, 2), a[None], b[None]).transpose(1, 2)
        elif params[1:3] == ["cos", "sin"]:  # one tensor [b, h, s, d] at a time (Gemma 3n style)
            qr, kr = apply_fn(q, a[None], b[None]), apply_fn(k, a[None], b[None])
        else:
            kwargs = {"mrope_section": list(mrope_section or ())} if "mrope_section" in params else {}
            qr, kr = apply_fn(q, k, a[None], b[None], **kwargs)
    return q, k, qr[0, 0] @ kr[0, 0].T


@contextlib.contextmanager
def one_thread():
    """Tiny tensors: extra intra-op threads only add wake-up latency (13x slower on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def no_rope_layer_types(cfg) -> set[str]:
    """Layer types the config lists with ``rope_parameters[type] = None`` (layers without RoPE)."""
    params = getattr(cfg, "rope_parameters", None)
    if not isinstance(params, dict):
        return set()
    return {k for k, v in params.items() if v is None and k in (getattr(cfg, "layer_types", None) or ())}


def module_failed(family, cls, cfg, exc, doing: str) -> RopeConfigError:
    """The family's own code refused the config: say so, in one line (and plainly for a layer type
    that ``layer_types`` lists but ``rope_parameters`` leaves out)."""
    key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
    if isinstance(key, str) and key in (getattr(cfg, "layer_types", None) or ()):
        return RopeConfigError(
            f"model_type={family!r}: layer_types lists {key!r} but rope_parameters has no entry for it "
            f"(rope_parameters={getattr(cfg, 'rope_parameters', None)!r}), so transformers' own {cls.__name__} "
            f"cannot be built; give rope_parameters[{key!r}] (null for layers without RoPE)"[:500]
        )
    return RopeConfigError(f"model_type={family!r}: {doing} failed: {exc!r}"[:400])
