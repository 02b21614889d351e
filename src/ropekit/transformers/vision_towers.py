"""Vision towers: their axial rotary modules swapped for ropekit's exact tables.

A vision tower (Qwen2-VL's, GLM-4V's, ...) turns image patches by an axial RoPE
(``RopeSpec.axial``), computed by a module called with ``[N, 2]`` position ids.  Its ``inv_freq``
is a buffer, so ``model.to(torch.bfloat16)`` rounds it: on a 100 x 100 patch grid Qwen2-VL's vision
cos is then off by 0.18.  ``swap_vision_rotaries`` replaces each such module by ``AxialTables``,
which keeps its frequencies outside the module's buffers and hands the tower's attention the
tables in the family's own form (width, column order, dtype), so the tower's apply function runs
unchanged.  Before anything is swapped, the stand-in is checked against a fresh module of the family
built from the tower's config: bit for bit in ``precision="hf"``; a disagreement refuses the patch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import RopeError, RopeShapeError
from ..frequencies import inv_freq
from ..spec import RopeSpec
from ..tables import checked_positions, tables_from
from . import discovery
from .forms import widened

__all__ = ["AxialTables", "swap_vision_rotaries"]


class AxialTables(nn.Module):
    """A vision tower's rotary module: ``forward(x, position_ids [N, axes])`` -> (cos, sin) in the
    family's form (``duplicated``: ``"cat"`` or ``"repeat"``), float32 or ``x.dtype`` as it returns."""

    def __init__(self, spec: RopeSpec, duplicated: str, follows_x: bool, precision: str, replaces: str):
        super().__init__()
        self.spec, self.duplicated, self.follows_x, self.precision = spec, duplicated, follows_x, precision
        self.replaces = replaces
        # a plain attribute, not a buffer: .to(bfloat16) never reaches the frequencies
        self.frequencies = inv_freq(spec, precision=precision)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        n_axes = len(self.spec.mrope_section)
        if position_ids.dim() != 2 or position_ids.shape[-1] != n_axes:
            raise RopeShapeError(
                f"position_ids {list(position_ids.shape)}: {self.replaces}'s stand-in takes [N, {n_axes}] patch "
                "positions, as the tower passes them"
            )
        pos = position_ids.movedim(-1, 0)
        if not torch.compiler.is_compiling():
            pos = checked_positions(self.spec, pos)
        work = torch.float32 if self.precision == "hf" else torch.float64
        inv, factor = self.frequencies
        cos, sin = tables_from(self.spec, pos, inv, factor, dtype=work, device=x.device, precision=self.precision)
        out = x.dtype if self.follows_x else torch.float32
        return widened(cos, self.duplicated).to(out), widened(sin, self.duplicated).to(out)

    def extra_repr(self) -> str:
        return f"exact {self.spec.describe()} precision={self.precision} (was {self.replaces})"


def _stand_in(mod, precision: str):
    """(AxialTables for ``mod``, None) or (None, why it is left to transformers)."""
    from ..dialects.measured import Probe, measure_probe

    config = getattr(mod, "config", None)
    if not callable(getattr(config, "to_dict", None)):  # releases whose tower module takes (dim, theta)
        return None, f"{type(mod).__name__} holds no config to read its RoPE from"
    try:
        probe = Probe(config)
        spec = measure_probe(probe).spec
    except RopeError as exc:
        return None, f"no spec reads it ({str(exc)[:160]})"
    if probe.rotary_class is not type(mod) or probe.image is None or not spec.axial:
        return None, f"{type(mod).__name__} is not an axial tower rotary ropekit reads"
    if not probe.form.endswith(("duplicated by cat", "repeated per column")):
        return None, f"its tables come in a form ropekit does not hand out ({probe.form})"
    duplicated = "cat" if probe.form.endswith("duplicated by cat") else "repeat"
    with torch.no_grad():
        follows_x = probe.module(torch.zeros(1, dtype=torch.bfloat16), probe.positions.T[:2])[0].dtype == torch.bfloat16
    name = type(mod).__name__
    stand_in = AxialTables(spec, duplicated, follows_x, precision, name)
    # the stand-in against a fresh module of the family (fp32 buffers) on the probe's grid
    ids = probe.positions.T
    with torch.no_grad():
        want = probe.module(torch.zeros(1), ids)
        got = stand_in(torch.zeros(1), ids)
    worst = max((a.double() - b.double()).abs().max().item() for a, b in zip(want, got))
    if worst > (0.0 if precision == "hf" else 2e-6):
        raise RopeError(f"{name}: ropekit's stand-in differs from the module by {worst:.3g}; nothing was patched")
    return stand_in, None


def swap_vision_rotaries(model, precision: str, changes: list, skipped: list, modules: list) -> None:
    """Replace every vision-tower rotary module ropekit reads by its ``AxialTables`` (all checked
    before any is swapped); the others go to ``skipped`` with why.  ``modules`` gets ``(parent,
    attr, original)`` for each swap, ``changes`` what was changed."""
    plan, made = [], {}
    for path, mod in discovery.rotary_modules(model, vision=True):
        if id(mod) not in made:
            made[id(mod)] = _stand_in(mod, precision)
        stand_in, why = made[id(mod)]
        if stand_in is None:
            skipped.append((path, f"vision-tower rotary left to transformers: {why}"))
        else:
            plan.append((path, mod, stand_in))
    for path, mod, stand_in in plan:
        parent, attr = discovery.owner_of(model, path)
        modules.append((parent, attr, mod))
        setattr(parent, attr, stand_in)
        changes.append((path, stand_in.extra_repr()))
