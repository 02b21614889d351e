"""Make a loaded transformers model use ropekit's exact tables and ropekit's rotation.

``patch(model)`` changes, for *this model only*:

* every rotary module (``*RotaryEmbedding``, per model or per layer as the release has it; GPT-J's
  and CodeGen's position tables before 5.0) becomes a :class:`ropekit.RotaryEmbedding` with the
  spec ``ropekit.from_config`` reads, returning the family's own table form.  It holds no
  floating-point buffer, so after ``model.to(torch.bfloat16)`` the tables are still the exact
  ones rounded once (transformers' own keep a bf16 ``inv_freq``: cos off by 2.0 near position 100k);
* every apply function the attention layers call (``apply_rotary_pos_emb`` in its 4.37, 4.38+
  and 5.x signatures, GPT-J's ``(tensor, sin, cos)``, mRoPE's, DeepSeek's interleave and complex
  forms) is served by ropekit's rotation while this model's attention runs; every other model still
  reaches transformers' function.

Each change is proven at patch time: the new tables are compared with the family module's on the
same positions, and the stand-in for each apply function with the function itself on random q/k
(which is also how the family's layout is found: measured, not assumed).  Whatever ropekit cannot
reproduce is refused here, before anything changes, never at the first forward.  ``layout=``
(default ``config.ropekit_layout``, else the family's own) is for checkpoints whose q/k rows were
converted to another layout.  ``patch`` returns a :class:`PatchReport` naming every change;
``unpatch`` undoes all of them.

>>> import torch, ropekit as rk
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> cfg = LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
...                   intermediate_size=64, vocab_size=50)
>>> model = LlamaForCausalLM(cfg).eval()
>>> ids = torch.tensor([[1, 2, 3, 4]])
>>> with torch.no_grad():
...     before = model(ids).logits
...     report = rk.hf.patch(model)
...     after = model(ids).logits
>>> torch.allclose(before, after, atol=1e-5), report.layout
(True, 'half')
>>> rk.hf.unpatch(model)
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import sys
from dataclasses import dataclass, field

import torch

from ..errors import RopeError
from ..spec import Dynamic, RopeSpec, normalize_layout
from . import discovery
from .checkpoint_keys import INV_FREQ_KEY, check_inv_freq
from .forms import family_name, table_form
from .position_tables import exact_sincos_table
from .rotary_embedding import RotaryEmbedding
from .rotators import build_rotator
from .vision_towers import swap_vision_rotaries

__all__ = ["patch", "unpatch", "is_patched", "PatchReport", "Change"]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("ropekit_hf_active", default=None)
#: the same, while torch.compile traces an attention forward: dynamo cannot trace a ContextVar, and a
#: one-slot list it can (the value only lives during tracing; the compiled graph has the rotation inlined)
_TRACED: list = [None]
#: (modeling module, function) -> [transformers' function, number of patched models using it]
_INSTALLED: dict[tuple[str, str], list] = {}
_ATTR = "_ropekit_patch"


@dataclass(frozen=True)
class Change:
    path: str  # module path in the model, or "<modeling module>.<function>"
    what: str  # "rotary module" | "position table" | "apply function" | "attention forward" | "load hook"
    detail: str


@dataclass
class PatchReport:
    """What ``patch`` changed (``changes``) and what it deliberately left alone (``skipped``)."""

    family: str | None
    layout: str
    precision: str
    specs: dict = field(default_factory=dict)  # layer type (None: the only one) -> RopeSpec
    changes: list[Change] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"ropekit.hf.patch: {self.family} layout={self.layout} precision={self.precision}"
        lines = [head] + [f"  {c.what:18s} {c.path}: {c.detail}" for c in self.changes]
        lines += [f"  left alone         {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


@dataclass
class _Undo:
    report: PatchReport
    rotators: dict
    modules: list = field(default_factory=list)  # (parent, attr, original module)
    tensors: list = field(default_factory=list)  # (module, attr, original tensor, was a buffer)
    forwards: list = field(default_factory=list)  # attention modules whose forward we shadowed
    hooks: list = field(default_factory=list)
    functions: list = field(default_factory=list)  # (modeling module, function) keys in _INSTALLED


def is_patched(model) -> bool:
    """>>> is_patched(object())
    False
    """
    return getattr(model, _ATTR, None) is not None


# ---------------------------------------------------------------------------------------------
# reading the spec(s)
# ---------------------------------------------------------------------------------------------


def _candidate_specs(config) -> dict[str | None, RopeSpec]:
    from ..dialects import from_config, layer_types_of

    types_ = []
    try:
        types_ = layer_types_of(config)
    except RopeError:
        pass
    specs = {lt: from_config(config, layer_type=lt) for lt in dict.fromkeys(types_)}
    if not specs or len(set(specs.values())) == 1:
        specs = {None: from_config(config)} if not specs else {None: next(iter(specs.values()))}
    return specs


def _read_specs(model) -> dict[str | None, RopeSpec]:
    config = getattr(model, "config", None)
    if config is None:
        raise RopeError(f"{type(model).__name__} has no .config; ropekit.hf.patch patches transformers models")
    try:
        return _candidate_specs(config)
    except RopeError as exc:
        raise RopeError(
            f"ropekit.hf.patch: cannot read this model's RoPE from its config ({exc}); nothing was patched"
        ) from None


# ---------------------------------------------------------------------------------------------
# rotary modules and position tables
# ---------------------------------------------------------------------------------------------


def _replacement(mod, specs, form, precision):
    """A RotaryEmbedding standing in for ``mod``, proven equal to it on probe positions."""
    x = torch.zeros(1, dtype=torch.float32, device=_device_of(mod))
    sections = [s.mrope_section for s in specs.values() if s.mrope_section is not None]
    # mRoPE: compared at positions that differ between the axes, so a pair on the wrong axis shows
    axes = len(sections[0]) if sections else None
    slack = discovery.buffer_dtype(mod)
    legacy = discovery.is_legacy_module(mod)
    multi = "layer_type" in inspect.signature(mod.forward).parameters and len(specs) > 1
    candidates = [specs] if multi else [{None: s} for s in specs.values()]
    worst = float("inf")
    for chosen in candidates:
        dynamic = any(isinstance(s.scaling, Dynamic) for s in chosen.values())
        ours = RotaryEmbedding(spec=chosen, precision=precision, form=form, stateful=dynamic, legacy_cache=legacy)
        ok = True
        with torch.no_grad():
            for lt in chosen if multi else [None]:
                theirs = discovery.call_rotary(mod, x, discovery.PROBE_POSITIONS, lt, axes)
                mine = discovery.call_rotary(ours, x, discovery.PROBE_POSITIONS, lt, axes, legacy=legacy)
                match, err = discovery.tables_match(theirs, mine, slack)
                ok, worst = ok and match, min(worst, err) if not match else worst
        if ok:
            return ours, chosen
    described = "; ".join(f"{k or 'default'}: {s.describe()}" for k, s in specs.items())
    raise RopeError(
        f"{type(mod).__name__} computes other tables than ropekit's reading of the config ({described}; "
        f"max difference {worst:.3g}); ropekit.hf.patch refuses rather than change this model's RoPE"
    )


def _device_of(mod) -> torch.device:
    for t in (*mod.buffers(), *mod.parameters()):
        if t is not None:
            return t.device
    return torch.device("cpu")


def _swap_rotary_modules(model, specs, form, precision, undo: _Undo) -> dict:
    used = {}
    by_original: dict[int, RotaryEmbedding] = {}
    for path, mod in discovery.rotary_modules(model):
        if id(mod) not in by_original:
            by_original[id(mod)], chosen = _replacement(mod, specs, form, precision)
            used.update(chosen)
        parent, attr = discovery.owner_of(model, path)
        undo.modules.append((parent, attr, mod))
        setattr(parent, attr, by_original[id(mod)])
        undo.report.changes.append(Change(path, "rotary module", by_original[id(mod)].extra_repr()))
    return used


def _swap_position_tables(attention, specs, precision, undo: _Undo) -> None:
    """GPT-J / CodeGen before 5.0: each attention holds a ``[positions, r]`` (sin | cos) table."""
    spec = next(iter(specs.values()))
    for path, mod, _ in attention:
        table = getattr(mod, "embed_positions", None)
        if not isinstance(table, torch.Tensor):
            continue
        ours = exact_sincos_table(spec, table.shape[0], precision).to(table.device)
        match, err = discovery.tables_match(table, ours, table.dtype)
        if not match:
            raise RopeError(
                f"{path}.embed_positions differs from ropekit's {spec.describe()} by {err:.3g}; refusing to patch"
            )
        was_buffer = "embed_positions" in mod._buffers
        undo.tensors.append((mod, "embed_positions", table, was_buffer))
        if was_buffer:
            del mod._buffers["embed_positions"]
        # a plain attribute, not a buffer: model.to(bfloat16) must not round it
        object.__setattr__(mod, "embed_positions", ours)
        undo.report.changes.append(Change(f"{path}.embed_positions", "position table", f"exact {spec.describe()}"))


# ---------------------------------------------------------------------------------------------
# apply functions
# ---------------------------------------------------------------------------------------------


def _dispatcher(key, original):
    @functools.wraps(original)
    def dispatch(*args, **kwargs):
        rotators = _TRACED[0] if torch.compiler.is_compiling() else _ACTIVE.get()
        fn = None if rotators is None else rotators.get(key)
        if fn is None:
            return original(*args, **kwargs)
        return fn(*args, **kwargs)

    dispatch._ropekit_original = original
    return dispatch


def _rotators(attention, specs, form, layout, backend, legacy_tables, report) -> dict:
    section = next((s.mrope_section for s in specs.values() if s.mrope_section), None)
    rotators = {}
    for key, kind in sorted({k: v for _, _, found in attention for k, v in found.items()}.items()):
        fn = getattr(discovery.modeling_module(key[0]), key[1])
        fn = getattr(fn, "_ropekit_original", fn)
        dup = form.duplicate if form.duplicate in ("cat", "repeat") else "cat"
        conv = discovery.convention_of(fn, kind, dup, legacy_tables, section, backend)
        discovery.check_direction(f"{key[0]}.{key[1]}", conv, specs.values())
        if layout is not None and normalize_layout(layout) != conv.layout:
            if conv.kind not in ("qk", "mrope", "single_sin_cos"):
                raise RopeError(
                    f"layout={layout!r}: {key[1]} reorders its output ({conv.kind}); ropekit.hf.patch can only run "
                    f"this family in its own layout {conv.layout!r}"
                )
            conv = dataclasses.replace(conv, layout=layout)
        rotators[key] = build_rotator(conv)
        report.changes.append(
            Change(
                f"{key[0]}.{key[1]}",
                "apply function",
                f"{conv.kind} layout={conv.layout} tables={conv.duplicate}" + (" by -angle" if conv.inverse else ""),
            )
        )
        report.layout = conv.layout
    return rotators


def _install_functions(rotators, undo: _Undo) -> None:
    for key in rotators:
        module = sys.modules[key[0]]
        if key not in _INSTALLED:
            original = getattr(module, key[1])
            _INSTALLED[key] = [original, 0]
            setattr(module, key[1], _dispatcher(key, original))
        _INSTALLED[key][1] += 1
        undo.functions.append(key)


def _wrap_forwards(attention, rotators, undo: _Undo) -> None:
    for path, mod, _ in attention:
        bound = type(mod).forward.__get__(mod)

        def forward(*args, __bound=bound, **kwargs):
            if torch.compiler.is_compiling():
                previous, _TRACED[0] = _TRACED[0], rotators
                try:
                    return __bound(*args, **kwargs)
                finally:
                    _TRACED[0] = previous
            token = _ACTIVE.set(rotators)
            try:
                return __bound(*args, **kwargs)
            finally:
                _ACTIVE.reset(token)

        mod.forward = forward  # the instance attribute shadows the class's forward
        undo.forwards.append(mod)
        undo.report.changes.append(Change(path, "attention forward", "runs with ropekit's rotation"))


def _add_load_hooks(attention, specs, undo: _Undo) -> None:
    """Old checkpoints carry ``...self_attn.rotary_emb.inv_freq``: verify, then drop, under strict loading."""
    key_tail = f"rotary_emb.{INV_FREQ_KEY}"

    def hook(state_dict, prefix, *args):
        key = prefix + key_tail
        if key in state_dict:
            check_inv_freq(state_dict.pop(key), specs.values(), key)

    for _path, mod, _ in attention:
        if "rotary_emb" not in mod._modules:  # a child RotaryEmbedding checks its own key
            undo.hooks.append(mod._register_load_state_dict_pre_hook(hook))
    if undo.hooks:
        undo.report.changes.append(Change("attention layers", "load hook", f"accept and verify {key_tail} keys"))


# ---------------------------------------------------------------------------------------------
# patch / unpatch
# ---------------------------------------------------------------------------------------------


def patch(model, layout: str | None = None, *, precision: str = "exact", backend: str | None = None) -> PatchReport:
    """Swap this model's rotary modules and apply functions for ropekit's (see the module docstring).

    ``layout``: the layout of this checkpoint's q/k rows when it differs from the family's own
    (default ``config.ropekit_layout``, else the family's own).  ``precision``: ``"exact"``
    (float64 tables, one rounding) or ``"hf"`` (transformers' float32 arithmetic).  ``backend``
    is passed to ``ropekit.apply_rope_qk`` (None: auto).
    """
    if is_patched(model):
        raise RopeError("model is already patched by ropekit; call ropekit.hf.unpatch(model) first")
    config = getattr(model, "config", None)
    if layout is None:
        layout = getattr(config, "ropekit_layout", None)
    if layout is not None:
        layout = normalize_layout(layout)
    specs = _read_specs(model)
    family = family_name(getattr(config, "model_type", None))
    form = table_form(getattr(config, "model_type", None))
    attention, skipped = discovery.attention_layers(model)
    rotary = discovery.rotary_modules(model)
    if not attention:
        raise RopeError(
            f"{type(model).__name__}: no attention layer calls a rotation ropekit.hf.patch can stand in for "
            f"({', '.join(discovery.KNOWN_FUNCTIONS)}); nothing was patched"
        )
    has_tables = any(isinstance(getattr(m, "embed_positions", None), torch.Tensor) for _, m, _ in attention)
    if not rotary and not has_tables:
        raise RopeError(f"{type(model).__name__}: no rotary module found to replace; nothing was patched")
    report = PatchReport(family, layout or "", precision, skipped=skipped)
    undo = _Undo(report, {})
    legacy_tables = any(discovery.is_legacy_module(m) for _, m in rotary)
    # everything that can refuse runs before the model changes
    undo.rotators = _rotators(attention, specs, form, layout, backend, legacy_tables, report)
    try:
        report.specs = _swap_rotary_modules(model, specs, form, precision, undo) or dict(specs)
        _swap_position_tables(attention, specs, precision, undo)
        towers: list = []
        swap_vision_rotaries(model, precision, towers, report.skipped, undo.modules)
        report.changes += [Change(path, "rotary module", detail) for path, detail in towers]
    except Exception:
        _restore(undo)
        raise
    _install_functions(undo.rotators, undo)
    _wrap_forwards(attention, undo.rotators, undo)
    _add_load_hooks(attention, specs, undo)
    setattr(model, _ATTR, undo)
    return report


def _restore(undo: _Undo) -> None:
    for parent, attr, original in reversed(undo.modules):
        setattr(parent, attr, original)
    for mod, attr, original, was_buffer in reversed(undo.tensors):
        mod.__dict__.pop(attr, None)
        if was_buffer:
            mod._buffers[attr] = original
        else:
            object.__setattr__(mod, attr, original)
    for mod in undo.forwards:
        mod.__dict__.pop("forward", None)
    for handle in undo.hooks:
        handle.remove()
    for key in undo.functions:
        entry = _INSTALLED[key]
        entry[1] -= 1
        if entry[1] == 0:
            setattr(sys.modules[key[0]], key[1], entry[0])
            del _INSTALLED[key]
    undo.modules, undo.tensors, undo.forwards, undo.hooks, undo.functions = [], [], [], [], []


def unpatch(model) -> None:
    """Undo ``patch``: the original rotary modules, tables, forwards and functions, exactly."""
    undo = getattr(model, _ATTR, None)
    if undo is None:
        raise RopeError("model is not patched by ropekit")
    _restore(undo)
    delattr(model, _ATTR)
