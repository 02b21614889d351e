"""Measure a transformers family's RoPE from its own modeling code.

For a family that is not in ``hf_config.FAMILIES``, ropekit does not guess: when transformers is
importable it builds that family's rotary module from the config, calls it, and probes the
family's ``apply_rotary_pos_emb`` with q/k vectors.  A spec is returned only when

* ropekit's ``precision="hf"`` tables equal the module's own (see ``TABLE_TOL``), and
* exactly one layout reproduces the attention scores ``q_m . k_n`` of the family's apply
  function (scores, not rotated vectors: some families write their output in another order).

Anything else is refused with the reason.  The spec's ``source`` says that it was measured.

>>> import ropekit as rk
>>> from transformers import LlamaConfig
>>> cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4)
>>> measure(cfg).spec.layout
'half'
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any

from ..errors import RopeConfigError, RopeError

__all__ = [
    "Measurement",
    "Probe",
    "family_layer_types",
    "measure",
    "pick_rotary",
    "rotary_classes",
    "TABLE_TOL",
    "SCORE_TOL",
]

#: largest |cos/sin| difference accepted between ropekit's hf tables and the family's module: a few
#: float32 ulps at the sampled positions (transformers' families order the same float32 operations
#: differently in places, e.g. ``base ** -x`` vs ``1 / base ** x``); a wrong base or scaling is >1e-3 off
TABLE_TOL = 2e-6
#: largest relative attention-score difference accepted between the two apply functions
SCORE_TOL = 1e-5
#: positions sampled: the first 32, then a spread up to a few thousand (cheap, and far enough
#: that a wrong frequency shows)
_POSITIONS = (*range(32), 100, 257, 1000, 2047)


@dataclass(frozen=True)
class Measurement:
    """What measuring a family's rotary module found.

    spec: the RopeSpec that reproduces it; table_err: max |cos/sin| difference to the module's
    tables (hf precision); score_err: max relative q.k difference to the family's apply function;
    note: how the spec was obtained (becomes ``spec.source``).
    """

    spec: Any
    table_err: float
    score_err: float | None
    note: str


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is installed where this is used
        return None
    return transformers


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


#: rotary classes of other towers (images, audio, diffusion heads): 2D / other position schemes,
#: not the language model's
_OTHER_TOWERS = ("Vision", "Audio", "DiT", "Talker", "Video")


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


def pick_rotary(config):
    """The language model's rotary class for ``config`` and the (sub-)config it is built from
    (``(None, None)`` when its family has none)."""
    text = _text_of(config)
    classes = rotary_classes(type(text)) or rotary_classes(type(config))
    for cls, cfg_cls in classes:  # a class that takes exactly this config
        if cfg_cls is type(text):
            return cls, text
    # composite families annotate the text rotary with the composite config, yet build it
    # from the text config (transformers' own models pass config.text_config)
    for cls, cfg_cls in classes:
        if cfg_cls is None:
            continue
        parts = getattr(cfg_cls, "sub_configs", None) or {}
        if cfg_cls is type(config) or isinstance(text, cfg_cls) or parts.get("text_config") is type(text):
            return cls, text
    return None, None


def _call_rotary(module, cfg, layer_type):
    import torch

    pos = torch.tensor([_POSITIONS], dtype=torch.int64)
    x = torch.zeros(1, len(_POSITIONS), 8, dtype=torch.float32)
    params = inspect.signature(module.forward).parameters
    kwargs = {"layer_type": layer_type} if "layer_type" in params and layer_type is not None else {}
    with torch.no_grad():
        out = module(x, pos, **kwargs)
    n = len(_POSITIONS)
    if isinstance(out, torch.Tensor) and out.is_complex():  # Llama 4 / DeepSeek-V2: freqs_cis = cos + i sin
        out = out.reshape(n, -1)
        return out, None
    a, b = out
    return a.float().reshape(n, -1), b.float().reshape(n, -1)


def _compact(a, b):
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


def _apply_function(module, complex_table: bool, config):
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


def _read_spec(cfg, layout: str, layer_type, n_pairs: int):
    """ropekit's reading of the config's keys, with the layout measured and rotary_dim checked."""
    from . import hf_config
    from .reading import Source

    data = cfg.to_dict()
    try:
        spec = hf_config.read(Source(data, type(cfg).__name__), layer_type=layer_type, layout=layout)
    except RopeConfigError as exc:
        if "head_dim" not in str(exc) and "hidden_size" not in str(exc) and "num_attention_heads" not in str(exc):
            raise
        # the family sizes its heads from keys of its own (d_model, encoder heads ...): the
        # module's table width is the measured truth, so describe the slice it rotates
        data["head_dim"] = 2 * n_pairs
        spec = hf_config.read(Source(data, type(cfg).__name__), layer_type=layer_type, layout=layout)
    if spec.rotary_dim != 2 * n_pairs:
        # the module rotates another number of dims than the config keys say: describe the slice
        # the module rotates, as ropekit does for DeepSeek's MLA rope part
        spec = spec.replace(head_dim=max(spec.head_dim, 2 * n_pairs), rotary_dim=2 * n_pairs)
    return spec


def _scores(apply_fn, a, b, width, mrope_section):
    """q.k scores (q at every position, k at every position) from the family's apply function,
    called as its attention calls it: with the rotary module's outputs in the order it returns them."""
    import torch

    gen = torch.Generator().manual_seed(0)
    # two heads: a function written for [b, s, h, d] cannot broadcast a [b, h, s, d] input, and back
    q = torch.randn(1, 2, len(_POSITIONS), width, generator=gen)
    k = torch.randn(1, 2, len(_POSITIONS), width, generator=gen)
    params = list(inspect.signature(apply_fn).parameters)
    with torch.no_grad():
        if b is None:  # (xq, xk, freqs_cis): DeepSeek-V2 on [b, h, s, d], Llama 4 on [b, s, h, d]
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
def _one_thread():
    """Tiny tensors: extra intra-op threads only add wake-up latency (13x slower on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def family_layer_types(config) -> list[str]:
    """The layer types the family's rotary module keeps a RoPE for (empty: one for all layers)."""
    cls, cfg = pick_rotary(config)
    if cls is None:
        return []
    try:
        return list(getattr(cls(cfg), "layer_types", None) or [])
    except Exception:
        return []


class Probe:
    """A family's own rotary module and apply function, called once on sample positions; a spec
    is then judged against them (``table_err``, ``score_err``)."""

    def __init__(self, config, layer_type: str | None = None):
        if _transformers() is None:
            raise RopeConfigError("measuring a family's RoPE needs transformers: pip install 'ropekit[hf]'")
        self.family = family = getattr(config, "model_type", None)
        cls, self.config = pick_rotary(config)
        if cls is None:
            raise RopeConfigError(f"model_type={family!r}: transformers has no text RotaryEmbedding for this config")
        self.rotary_class = cls
        try:
            module = cls(self.config)
        except Exception as exc:  # the family's own code refused the config: say so, in one line
            raise RopeConfigError(f"model_type={family!r}: {cls.__name__}(config) failed: {exc!r}"[:400]) from None
        self.layer_types = list(getattr(module, "layer_types", None) or [])
        if self.layer_types and layer_type is None:
            raise RopeConfigError(
                f"this config has a different RoPE per layer type ({', '.join(self.layer_types)}); "
                f"pass layer_type= one of them"
            )
        self.layer_type = layer_type
        try:
            with _one_thread():
                self.raw = _call_rotary(module, self.config, layer_type)
        except Exception as exc:
            raise RopeConfigError(f"model_type={family!r}: calling {cls.__name__} failed: {exc!r}"[:400]) from None
        self.cos, self.sin, self.form = _compact(*self.raw)
        self.apply_fn = _apply_function(
            importlib.import_module(cls.__module__), complex_table=self.raw[1] is None, config=self.config
        )
        if self.apply_fn is None:
            raise RopeConfigError(f"model_type={family!r}: its modeling module has no apply function to probe")

    @property
    def n_pairs(self) -> int:
        return self.cos.shape[-1]

    def table_err(self, spec) -> float:
        """Max |cos/sin| difference between ropekit's hf tables for ``spec`` and the module's."""
        import torch

        from ..tables import cos_sin

        with _one_thread():
            c, s = cos_sin(spec, torch.tensor(_POSITIONS), dtype=torch.float32, precision="hf", seq_len=len(_POSITIONS))
        if c.shape != self.cos.shape:
            return math.inf
        return max((c - self.cos).abs().max().item(), (s - self.sin).abs().max().item())

    def score_err(self, spec) -> float:
        """Max relative q.k difference between the family's apply function and ropekit's rotation."""
        import torch

        from ..apply import apply_rope_qk
        from ..tables import cos_sin

        with _one_thread():
            try:
                q, k, ref = _scores(self.apply_fn, *self.raw, 2 * self.n_pairs, spec.mrope_section)
            except Exception as exc:
                raise RopeConfigError(
                    f"model_type={self.family!r}: probing {self.apply_fn.__name__} failed: {exc!r}"[:400]
                ) from None
            pos = torch.tensor(_POSITIONS)
            cos, sin = cos_sin(spec, pos, dtype=torch.float32, precision="hf", seq_len=len(_POSITIONS))
            if spec.rotary_dim != 2 * self.n_pairs:
                return math.inf
            qr, kr = apply_rope_qk(q, k, cos, sin, layout=spec.layout, format="bhsd", backend="reference")
            mine = qr[0, 0] @ kr[0, 0].T
        return ((mine - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def measure(config, layer_type: str | None = None) -> Measurement:
    """Measure the RoPE of a transformers ``PretrainedConfig`` from its family's modeling code."""
    probe = Probe(config, layer_type)
    family, name = probe.family, probe.rotary_class.__name__
    results = {}
    for layout in ("half", "interleaved"):
        try:
            spec = _read_spec(probe.config, layout, layer_type, probe.n_pairs)
        except RopeError as exc:
            raise RopeConfigError(f"model_type={family!r}: {exc}") from None
        results[layout] = (spec, probe.score_err(spec))
    good = [lay for lay, (_, err) in results.items() if err <= SCORE_TOL]
    if len(good) != 1:
        errs = ", ".join(f"{lay}: {err:.3g}" for lay, (_, err) in results.items())
        raise RopeConfigError(
            f"model_type={family!r}: no single layout reproduces its {probe.apply_fn.__name__} "
            f"(relative q.k error {errs}); refusing rather than guessing"
        )
    spec, score_err = results[good[0]]
    table_err = probe.table_err(spec)
    if not table_err <= TABLE_TOL:
        raise RopeConfigError(
            f"model_type={family!r}: ropekit's reading ({spec.describe()}) differs from {name}'s "
            f"tables by {table_err:.3g}; refusing rather than guessing"
        )
    version = _transformers().__version__
    note = f"measured from transformers {version} {name} and {probe.apply_fn.__name__}"
    return Measurement(spec.replace(source=note), table_err, score_err, note)
