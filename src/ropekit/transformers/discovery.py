"""Find, in a loaded transformers model, what ``patch`` must change, and prove each change right.

* ``attention_layers(model)``: the attention modules and the apply functions their code calls
  (read from the functions' code objects: the names a method loads as globals), the vision
  towers' attention set aside, and any RoPE-like global that ropekit does not know refused;
* ``rotary_modules(model)``: every ``*RotaryEmbedding`` module, under every path it is reachable by;
* ``convention_of(...)``: one family function's calling convention, its layout and direction
  measured by calling the function itself on random q/k and comparing with ropekit in each
  candidate layout, by +angle and by -angle;
* ``tables_match(...)``: a family rotary module's output against ropekit's for the same positions.

All of it runs once, at patch time.

>>> sorted(KNOWN_FUNCTIONS)[:2]
['apply_multimodal_rotary_pos_emb', 'apply_rotary_emb']
"""

from __future__ import annotations

import inspect
import sys
import types

import torch

from ..errors import RopeError
from .forms import widened
from .rotators import Convention, build_rotator

__all__ = [
    "KNOWN_FUNCTIONS",
    "attention_layers",
    "rotary_modules",
    "convention_of",
    "check_direction",
    "tables_match",
    "call_rotary",
]

#: family functions ropekit.hf.patch stands in for -> the convention their signature implies
KNOWN_FUNCTIONS = {
    "apply_rotary_pos_emb": "qk",
    "apply_rotary_pos_emb_interleave": "qk_half_out",
    "apply_multimodal_rotary_pos_emb": "mrope",
    "apply_rotary_emb": "complex",
}


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _functions_of(klass) -> list[types.FunctionType]:
    out = []
    for attr in vars(klass).values():
        fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        while fn is not None:
            if isinstance(fn, types.FunctionType):
                out.append(fn)
            fn = getattr(fn, "__wrapped__", None)
    return out


def _rope_globals(cls) -> dict[tuple[str, str], str]:
    """(modeling module, function name) -> convention kind, for each rotation ``cls``'s code calls.

    Raises for a RoPE-like module-level function ropekit cannot stand in for."""
    found: dict[tuple[str, str], str] = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("transformers."):
            continue
        for fn in _functions_of(klass):
            module = fn.__globals__.get("__name__")
            for name in _code_names(fn.__code__):
                target = fn.__globals__.get(name)
                if not isinstance(target, types.FunctionType):
                    continue
                if name in KNOWN_FUNCTIONS:
                    found[(module, name)] = KNOWN_FUNCTIONS[name]
                elif "rotary" in name or "rope" in name:
                    raise RopeError(
                        f"{cls.__name__} calls {module}.{name}, a rotation ropekit.hf.patch cannot stand in for; "
                        f"patching the rest would leave this model half patched"
                    )
    return found


def attention_layers(model):
    """``(attention, skipped)``: ``[(path, module, {(modeling, fn): kind})]`` and ``[(path, reason)]``."""
    attention, skipped, seen = [], [], {}
    for path, mod in model.named_modules():
        name = type(mod).__name__
        if "Attention" not in name or not type(mod).__module__.startswith("transformers."):
            continue
        if "Vision" in name or ".visual." in f".{path}.":
            why = "vision-tower attention: its apply function is left to transformers (its rotary module is "
            skipped.append((path, why + "swapped for ropekit's exact tables where the tower's RoPE is read)"))
            continue
        if type(mod) not in seen:
            seen[type(mod)] = _rope_globals(type(mod))
        if seen[type(mod)] or isinstance(getattr(mod, "embed_positions", None), torch.Tensor):
            attention.append((path, mod, seen[type(mod)]))
    return attention, skipped


def rotary_modules(model, vision: bool = False):
    """``[(path, module)]`` of every text rotary module (``vision``: every vision-tower rotary
    module instead), each path it is registered under."""
    found = []
    for path, mod in model.named_modules(remove_duplicate=False):
        name = type(mod).__name__
        if (
            name.endswith("RotaryEmbedding")
            and ("Vision" in name) == vision
            and type(mod).__module__.startswith("transformers.")
        ):
            found.append((path, mod))
    return found


def is_legacy_module(mod) -> bool:
    """A pre-4.38 style module: ``forward(x, seq_len=)`` returns the whole table, no position_ids."""
    return "position_ids" not in inspect.signature(mod.forward).parameters


# ---------------------------------------------------------------------------------------------
# tables: the family module against ropekit's
# ---------------------------------------------------------------------------------------------

PROBE_POSITIONS = 16


def call_rotary(mod, x: torch.Tensor, n: int, layer_type=None, axes: int | None = None, legacy: bool | None = None):
    """Call a rotary module the way its family's model does (``legacy``: by ``seq_len=``; default:
    what its signature says), for positions ``0..n-1``; with ``axes``, one row of positions per
    mRoPE axis ``[axes, 1, n]``, axis a holding ``0..n-1`` rolled by 5a (every axis differs)."""
    params = inspect.signature(mod.forward).parameters
    if legacy is None:
        legacy = "position_ids" not in params
    if legacy:
        return mod(x, seq_len=n)
    pos = torch.arange(n, device=x.device)[None]
    if axes:
        pos = torch.stack([pos.roll(5 * a, dims=-1) for a in range(axes)])
    if layer_type is not None and "layer_type" in params:
        return mod(x, pos, layer_type)
    return mod(x, pos)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def tables_match(theirs, ours, slack_dtype: torch.dtype) -> tuple[bool, float]:
    """Equal shapes, and values within the rounding of the family module's own buffers."""
    a, b = _as_tuple(theirs), _as_tuple(ours)
    if len(a) != len(b) or any(x.shape != y.shape or x.is_complex() != y.is_complex() for x, y in zip(a, b)):
        return False, float("inf")
    err = max((x.to(y.dtype) - y).abs().max().item() if x.numel() else 0.0 for x, y in zip(a, b))
    # positions < PROBE_POSITIONS: the angle error of a frequency rounded to slack_dtype is < n * eps
    tol = 4 * PROBE_POSITIONS * torch.finfo(slack_dtype).eps + 1e-6
    return err <= tol, err


def buffer_dtype(mod) -> torch.dtype:
    """The lowest floating precision among a module's buffers (float32 when it has none)."""
    dtypes = [b.dtype for b in mod.buffers() if b is not None and b.is_floating_point()]
    return max(dtypes, key=lambda d: torch.finfo(d).eps, default=torch.float32)


# ---------------------------------------------------------------------------------------------
# apply functions: the convention, and the layout measured from the function itself
# ---------------------------------------------------------------------------------------------


def _probe_inputs(kind: str, duplicate: str, indexed: bool, mrope_section, takes_positions: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, h = 5, 4 if mrope_section is None else sum(mrope_section)
    angles = torch.rand(n, h, generator=g, dtype=torch.float64) * 6
    cos, sin = angles.cos().float(), angles.sin().float()
    q = torch.randn(1, 2, n, 2 * h, generator=g)
    k = torch.randn(1, 1, n, 2 * h, generator=g)
    if kind == "single_sin_cos":
        return (q.transpose(1, 2), sin[None], cos[None]), (q.transpose(1, 2), sin[None], cos[None])
    if kind == "complex":
        return (q, k, torch.complex(cos, sin)[None]), (q, k, torch.complex(cos, sin)[None])

    c, s = widened(cos, duplicate), widened(sin, duplicate)
    if kind == "mrope":
        c, s = c.expand(3, 1, n, 2 * h), s.expand(3, 1, n, 2 * h)
        return (q, k, c, s, [*mrope_section]), (q, k, c, s, [*mrope_section])
    pos = torch.arange(n)[None]
    if indexed:
        return (q, k, c, s, pos), (q, k, c, s, pos)
    if takes_positions:  # 4.38 Gemma: position_ids required by the signature, passed as None, unused
        return (q, k, c[None], s[None], None), (q, k, c[None], s[None], None)
    return (q, k, c[None], s[None]), (q, k, c[None], s[None])


def _same(a, b) -> bool:
    a, b = _as_tuple(a), _as_tuple(b)
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))


def convention_of(fn, kind: str, duplicate: str, indexed: bool, mrope_section, backend) -> Convention:
    """The convention under which ropekit reproduces ``fn``: its layout measured, never assumed."""
    params = list(inspect.signature(fn).parameters)
    if kind == "qk" and params[:3] == ["tensor", "sin", "cos"]:
        kind = "single_sin_cos"
    position = inspect.signature(fn).parameters.get("position_ids")
    required = position is not None and position.default is inspect.Parameter.empty
    if kind == "qk":
        # the indexed form is the one whose tables are whole ([S_max, D]) and gathered by position_ids
        indexed = indexed and position is not None
    theirs_args, ours_args = _probe_inputs(kind, duplicate, indexed, mrope_section, required)
    with torch.no_grad():
        try:
            want = fn(*theirs_args)
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot prove the stand-in right
            raise RopeError(
                f"{fn.__module__}.{fn.__name__} does not take the {kind} calling convention ropekit expected "
                f"({type(exc).__name__}: {exc}); ropekit.hf.patch refuses rather than guess"
            ) from None
        layouts = ("interleaved",) if kind in ("qk_half_out", "complex") else ("half", "interleaved")
        # the direction is measured like the layout: NanoChat's apply turns its tables by -angle
        for layout in layouts:
            for inverse in (False, True):
                conv = Convention(kind, layout, duplicate, indexed, mrope_section, backend, inverse)
                if _same(build_rotator(conv)(*ours_args), want):
                    return conv
    raise RopeError(
        f"{fn.__module__}.{fn.__name__} rotates in no layout ropekit knows (tried {', '.join(layouts)}, by +angle "
        f"and by -angle, with {duplicate} tables); ropekit.hf.patch refuses rather than run this model wrong"
    )


def check_direction(name: str, conv: Convention, specs) -> None:
    """The direction the family function turns (measured) must be the one ropekit read: a family's
    rotary module hands over +angle tables, so a function that turns them back is angle_sign=-1."""
    measured = -1 if conv.inverse else 1
    read = sorted({s.angle_sign for s in specs})
    if read != [measured]:
        raise RopeError(
            f"{name} turns by {'-' if measured < 0 else '+'}angle, but ropekit reads this config as "
            f"angle_sign={read}; ropekit.hf.patch refuses rather than report a wrong spec"
        )


def owner_of(model, path: str):
    """The parent module and attribute name of ``path``."""
    parent, _, attr = path.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def modeling_module(name: str):
    return sys.modules[name]
