"""Make a loaded transformers model rotate q/k with ropekit, in a layout of your choice.

transformers' attention layers call their modeling module's ``apply_rotary_pos_emb(q, k, cos,
sin)`` by global name (Liger-Kernel replaces it the same way).  ``patch(model)`` installs one
dispatcher in each modeling module the model uses and wraps *this model's* attention forwards so
that, while they run, the dispatcher rotates with ``ropekit.apply_rope_qk`` in the requested
layout; every other model (and this one after ``unpatch``) still reaches transformers' own
function.  The cos/sin the model's rotary embedding produced are used as they are (compacted to
one column per pair), so a patched model in the half layout computes what transformers computes.

The main use: a checkpoint whose q/k rows were permuted to the interleaved layout
(``ropekit convert --layout interleaved``) loads into the same class and, patched with
``layout="interleaved"`` (read from ``config.ropekit_layout`` when present), gives the original
logits.  Kernels know nothing of transformers; this module knows nothing of kernels.

>>> import torch, ropekit as rk
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> cfg = LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
...                   intermediate_size=64, vocab_size=50)
>>> model = LlamaForCausalLM(cfg).eval()
>>> ids = torch.tensor([[1, 2, 3, 4]])
>>> with torch.no_grad():
...     before = model(ids).logits
...     _ = rk.hf.patch(model, layout="half")
...     after = model(ids).logits
>>> torch.allclose(before, after, atol=1e-6)
True
>>> rk.hf.unpatch(model)
"""

from __future__ import annotations

import contextvars
import functools
import sys
import types
from dataclasses import dataclass

import torch

from ..apply import apply_rope_qk
from ..errors import RopeError, RopeShapeError
from ..spec import normalize_layout

__all__ = ["patch", "unpatch", "is_patched"]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("ropekit_hf_active", default=None)
#: modeling module name -> [original apply_rotary_pos_emb, number of patched models using it]
_INSTALLED: dict[str, list] = {}
_ATTR = "_ropekit_patch"


@dataclass(frozen=True)
class _State:
    layout: str
    backend: str | None


def _compact(t: torch.Tensor, name: str) -> torch.Tensor:
    """transformers' tables are ``cat((freqs, freqs))``; ropekit's kernels take one column per pair."""
    half = t.shape[-1] // 2
    first, second = t[..., :half], t[..., half:]
    if t.shape[-1] % 2 or not torch.equal(first, second):
        raise RopeShapeError(
            f"{name} {list(t.shape)} is not transformers' duplicated cat((freqs, freqs)) table; this model's "
            f"rotary embedding is not one ropekit.hf.patch understands"
        )
    return first


def _dispatcher(original):
    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        state = _ACTIVE.get()
        if state is None:
            return original(q, k, cos, sin, *args, **kwargs)
        unsqueeze_dim = kwargs.pop("unsqueeze_dim", args[0] if args else 1)
        if unsqueeze_dim not in (1, 2) or cos.dim() != 3:
            raise RopeShapeError(
                f"ropekit.hf.patch: unsupported call (cos {list(cos.shape)}, unsqueeze_dim={unsqueeze_dim})"
            )
        fmt = "bhsd" if unsqueeze_dim == 1 else "bshd"
        cos, sin = _compact(cos, "cos"), _compact(sin, "sin")
        if cos.shape[0] == 1:  # one row of angles per sequence index, shared by the batch
            cos, sin = cos[0], sin[0]
        return apply_rope_qk(q, k, cos, sin, layout=state.layout, format=fmt, backend=state.backend)

    apply_rotary_pos_emb._ropekit_original = original
    return apply_rotary_pos_emb


def _attention_modules(model):
    for name, mod in model.named_modules():
        modeling = sys.modules.get(type(mod).__module__)
        fn = getattr(modeling, "apply_rotary_pos_emb", None)
        if fn is not None and type(mod).__name__.endswith("Attention") and callable(fn):
            yield name, mod, modeling


def is_patched(model) -> bool:
    """>>> is_patched(object())
    False
    """
    return getattr(model, _ATTR, None) is not None


def patch(model, layout: str | None = None, *, backend: str | None = None):
    """Rotate this model's q/k with ropekit in ``layout`` (default: ``config.ropekit_layout``, else
    ``"half"``).  ``backend`` is passed to ``apply_rope_qk`` (None: auto).  Returns the model."""
    if is_patched(model):
        raise RopeError("model is already patched by ropekit; call ropekit.hf.unpatch(model) first")
    if layout is None:
        layout = getattr(getattr(model, "config", None), "ropekit_layout", None) or "half"
    state = _State(normalize_layout(layout), backend)
    attns = list(_attention_modules(model))
    if not attns:
        raise RopeError(
            f"{type(model).__name__}: no attention layer calls a module-level apply_rotary_pos_emb; ropekit.hf.patch "
            f"cannot reach its rotation"
        )
    modules = {m.__name__: m for _, _, m in attns}
    for name, modeling in modules.items():
        if name not in _INSTALLED:
            original = modeling.apply_rotary_pos_emb
            _INSTALLED[name] = [original, 0]
            modeling.apply_rotary_pos_emb = _dispatcher(original)
        _INSTALLED[name][1] += 1
    for _, mod, _ in attns:
        bound = type(mod).forward.__get__(mod)

        def forward(*args, __bound=bound, **kwargs):
            token = _ACTIVE.set(state)
            try:
                return __bound(*args, **kwargs)
            finally:
                _ACTIVE.reset(token)

        mod.forward = forward  # the instance attribute shadows the class's forward
    setattr(model, _ATTR, types.SimpleNamespace(state=state, modules=list(modules), attention=[m for _, m, _ in attns]))
    return model


def unpatch(model) -> None:
    """Undo ``patch``: this model's attention layers call transformers' rotation again."""
    info = getattr(model, _ATTR, None)
    if info is None:
        raise RopeError("model is not patched by ropekit")
    for mod in info.attention:
        mod.__dict__.pop("forward", None)
    for name in info.modules:
        entry = _INSTALLED[name]
        entry[1] -= 1
        if entry[1] == 0:
            sys.modules[name].apply_rotary_pos_emb = entry[0]
            del _INSTALLED[name]
    delattr(model, _ATTR)
