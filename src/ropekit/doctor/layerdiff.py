"""diff_models: run two models on the same inputs and find the first module where they part.

Forward hooks record every module's floating-point inputs and outputs; modules are aligned by
name (``mapping`` renames A's names to B's, for ports whose module names differ).  The divergence
point is the first module (in the order modules finish) whose *inputs* agree but whose *outputs*
do not: everything after it diverges only because it was fed different values.  Errors are max
|a - b| (and relative to max |a|), never a mean of signed differences.

>>> import torch, ropekit as rk
>>> a = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> b = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> b.load_state_dict(a.state_dict())
<All keys matched successfully>
>>> with torch.no_grad():
...     _ = b[2].bias.add_(1.0)
>>> rk.diff_models(a, b, torch.randn(3, 4)).first_divergence
'2'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import RopeError

__all__ = ["diff_models", "LayerDiff", "ModuleDiff"]


def _tensors(obj) -> list[torch.Tensor]:
    """Floating-point tensors inside nested outputs (tuples, lists, dicts, ModelOutput)."""
    if isinstance(obj, torch.Tensor):
        return [obj.detach()] if obj.is_floating_point() else []
    if isinstance(obj, dict) or hasattr(obj, "to_tuple"):
        obj = list(obj.values()) if isinstance(obj, dict) else list(obj.to_tuple())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _record(model: torch.nn.Module, inputs, names: set[str] | None = None):
    calls: dict[str, list[tuple[list[torch.Tensor], list[torch.Tensor]]]] = {}
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if names is not None and name not in names:
            continue

        def hook(mod, args, kwargs, output, name=name):
            ins = _tensors(list(args) + list(kwargs.values()))
            outs = _tensors(output)
            calls.setdefault(name, []).append(([t.clone() for t in ins], [t.clone() for t in outs]))
            order.append(name)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            if isinstance(inputs, dict):
                model(**inputs)
            elif isinstance(inputs, (tuple, list)):
                model(*inputs)
            else:
                model(inputs)
    finally:
        for h in handles:
            h.remove()
    return calls, order


def _max_err(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> tuple[float, float]:
    """(max |x - y|, max |x|) over paired tensors; inf when shapes differ.  When one side has more
    tensors (a port whose attention also takes the cos/sin tables or a mask, or also returns the
    attention weights), the leading ones are paired: the hidden states come first in every
    implementation seen, and the extras have no counterpart to compare with."""
    err, mag = 0.0, 0.0
    if not xs or not ys:
        return (0.0, 0.0) if len(xs) == len(ys) else (float("inf"), 0.0)
    for x, y in zip(xs, ys):
        if x.shape != y.shape:
            return float("inf"), 0.0
        if x.numel():
            d = (x.double() - y.double()).abs()
            err = max(err, d.max().item())
            mag = max(mag, x.double().abs().max().item())
    return err, mag


@dataclass
class ModuleDiff:
    name: str
    name_b: str
    in_err: float
    out_err: float
    out_max: float
    diverged: bool
    in_max: float = 0.0
    inputs_agree: bool = True  # fed the same values (within tolerance) in both models

    @property
    def rel_err(self) -> float:
        return self.out_err / self.out_max if self.out_max else self.out_err


@dataclass
class LayerDiff:
    """Per-module errors in the order modules finished, and the divergence point."""

    rows: list[ModuleDiff]
    first_divergence: str | None
    unmatched: list[str] = field(default_factory=list)
    rtol: float = 0.0
    atol: float = 0.0

    def per_layer(self) -> list[ModuleDiff]:
        """Rows of the repeated blocks (``...layers.3``): how the error grows with depth."""
        return [r for r in self.rows if re.search(r"\.\d+$", r.name) or r.name == ""]

    def table(self, rows: list[ModuleDiff] | None = None) -> str:
        """Aligned text table: module, input and output max |a - b|, relative error, divergence mark.

        >>> import torch, ropekit as rk
        >>> m = torch.nn.Linear(2, 2)
        >>> print(rk.diff_models(m, m, torch.ones(1, 2)).table())
        module   in max|a-b|  out max|a-b|   relative  diverged
        <model>            0             0          0
        """
        rows = self.rows if rows is None else rows
        width = max([len(r.name or "<model>") for r in rows] + [6])
        lines = [f"{'module':{width}s}  {'in max|a-b|':>12s}  {'out max|a-b|':>12s}  {'relative':>9s}  diverged"]
        for r in rows:
            mark = "<- first" if r.name == self.first_divergence else ("yes" if r.diverged else "")
            lines.append(
                f"{r.name or '<model>':{width}s}  {r.in_err:12.3g}  {r.out_err:12.3g}  {r.rel_err:9.2g}  {mark}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (
            f"first divergence: {self.first_divergence}"
            if self.first_divergence
            else "no module diverges beyond tolerance"
        )
        shown = {id(r) for r in self.per_layer()}
        # the divergence point in its place among the layers (in the order modules finished)
        rows = [r for r in self.rows if id(r) in shown or r.name == self.first_divergence]
        return head + "\n" + self.table(rows)


def diff_models(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    inputs,
    mapping: dict[str, str] | Callable[[str], str | None] | None = None,
    *,
    rtol: float | None = None,
    atol: float = 0.0,
) -> LayerDiff:
    """Run both models on ``inputs`` (a tensor, a tuple of args, or a dict of kwargs) and report
    where their module outputs diverge.

    ``mapping``: A's module name -> B's (a dict, or a function returning None to skip a module);
    names not mapped are looked up unchanged.  A module diverges when
    ``max|a - b| > atol + rtol * max|a|``; ``rtol`` defaults to 16 ulps of the outputs' dtype.
    Returns a :class:`LayerDiff` (``.first_divergence``, ``.rows``, ``.per_layer()``, ``.table()``).

    >>> import torch, ropekit as rk
    >>> a = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
    >>> b = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
    >>> rep = rk.diff_models(a, b, torch.ones(1, 2))   # different random weights
    >>> rep.first_divergence, [r.name for r in rep.rows]
    ('0', ['0', '1', ''])
    """
    if not isinstance(model_a, torch.nn.Module) or not isinstance(model_b, torch.nn.Module):
        raise RopeError("diff_models needs two torch.nn.Module models")
    calls_a, order_a = _record(model_a, inputs)
    names_b = dict(model_b.named_modules())

    def to_b(name: str) -> str | None:
        if mapping is None:
            return name
        if callable(mapping):
            return mapping(name)
        return mapping.get(name, name)

    wanted_b = {to_b(n) for n in calls_a}
    calls_b, _ = _record(model_b, inputs, names={n for n in wanted_b if n in names_b})
    rows, unmatched, seen = [], [], set()
    for name in order_a:
        if name in seen:
            continue
        seen.add(name)
        nb = to_b(name)
        if nb is None or nb not in calls_b:
            unmatched.append(name)
            continue
        in_err = out_err = out_max = in_max = 0.0
        tol_dtype = None
        for (ins_a, outs_a), (ins_b, outs_b) in zip(calls_a[name], calls_b[nb]):
            e_in, m_in = _max_err(ins_a, ins_b)
            in_max = max(in_max, m_in)
            e_out, m_out = _max_err(outs_a, outs_b)
            in_err, out_err, out_max = max(in_err, e_in), max(out_err, e_out), max(out_max, m_out)
            if outs_a:
                tol_dtype = outs_a[0].dtype
        rt = rtol if rtol is not None else 16 * float(torch.finfo(tol_dtype or torch.float32).eps)
        diverged = out_err > atol + rt * out_max
        inputs_agree = in_err <= atol + rt * in_max
        rows.append(ModuleDiff(name, nb, in_err, out_err, out_max, diverged, in_max, inputs_agree))

    # the divergence point: fed the same values, produced different ones
    first = next((r.name for r in rows if r.diverged and r.inputs_agree), None)
    if first is None:
        first = next((r.name for r in rows if r.diverged), None)
    return LayerDiff(
        rows=rows, first_divergence=first, unmatched=unmatched, rtol=rtol if rtol is not None else -1.0, atol=atol
    )
