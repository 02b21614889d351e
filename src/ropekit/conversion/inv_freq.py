"""Stored RoPE frequencies (``rotary_emb.inv_freq``, Meta's ``rope.freqs``): what a conversion does
with them (``inv_freq=`` keep / drop / add / verify) and the check of stored ones against a spec.

transformers v4 kept one ``inv_freq`` per attention layer in some checkpoints; today's releases
compute them (float32) and store none.  Meta stores one ``rope.freqs`` per model, which Meta's code
ignores (``load_state_dict(strict=False)``).  So: a transformers -> Meta conversion keeps the first
stored table as ``rope.freqs``; Meta -> transformers drops ``rope.freqs`` (as transformers' own
converter does: a bf16 copy in every layer would be loaded by releases that still read it);
``inv_freq="add"`` writes the spec's exact frequencies, rounded once to float32.
"""

from __future__ import annotations

from ..errors import RopeCheckpointError, RopeSpecError
from ..layouts import FUSED_QK_ROLES
from ..spec import RopeSpec
from .formats.base import Checkpoint, role_of
from .plan import Step

__all__ = ["InvFreqPlanner", "verify_inv_freq", "check_spec_fits"]

_ADD_AFTER = ("q",) + FUSED_QK_ROLES  # the tensors holding q rows


def check_spec_fits(spec: RopeSpec, ckpt: Checkpoint, param: str = "spec") -> None:
    """The spec's head_dim / rotary_dim must be the model's: tables of another size are wrong."""
    g = ckpt.geometry
    if g is not None and (spec.head_dim != g.head_dim or spec.rotary_dim != g.rotary_dim):
        raise RopeSpecError(
            f"{param}: head_dim={spec.head_dim}, rotary_dim={spec.rotary_dim} but the model at {ckpt.path} has "
            f"head_dim={g.head_dim}, rotary_dim={g.rotary_dim}"
        )
    if g is None:  # a state dict without config: the q projection's rows must at least split into heads
        for name in ckpt.names():
            if role_of(name) == "q" and name.endswith(".weight") and "lora_" not in name:
                rows = ckpt.raw_info(name)[1][0]
                if rows % spec.head_dim:
                    raise RopeSpecError(f"{param}: head_dim={spec.head_dim} does not divide the {rows} rows of {name}")
                return


class InvFreqPlanner:
    """The steps for stored frequency tensors and for the ones ``inv_freq="add"`` creates."""

    def __init__(self, ckpt: Checkpoint, policy: str, spec, meta_names: bool, converting: bool, dst_fmt: str):
        self.ckpt, self.policy, self.spec = ckpt, policy, spec
        self.meta_names, self.converting, self.dst_fmt = meta_names, converting, dst_fmt
        self.dropped: list[Step] = []
        self.notes: list[str] = []
        self._added: set[str] = set()
        self._kept_one = False
        if policy == "add":
            check_spec_fits(spec, ckpt)

    def stored(self, name: str, dtype: str, shape) -> list[Step]:
        """Steps for one stored frequency tensor."""
        if self.policy in ("drop", "add"):
            return self._drop(name)
        if not self.converting:
            return [Step("copy", name, name, "inv_freq", dtype, shape)]
        if self.dst_fmt == "meta":  # one rope.freqs per model
            if self._kept_one:
                return self._drop(name)
            self._kept_one = True
            return [Step("copy", name, "rope.freqs", "inv_freq", dtype, shape)]
        self.notes.append(
            f"{name} not copied: transformers computes RoPE frequencies itself (float32); "
            "inv_freq='add' stores the spec's exact ones in every layer"
        )
        return self._drop(name)

    def _drop(self, name: str) -> list[Step]:
        self.dropped.append(Step("drop", name, None, "inv_freq"))
        return []

    def after(self, name: str) -> list[Step]:
        """``add``: one table per attention layer (transformers v4), one per model (Meta), placed
        right after the layer's q projection weight."""
        if self.policy != "add" or role_of(name) not in _ADD_AFTER:
            return []
        if not name.endswith(".weight") or "lora_" in name:
            return []
        if self.meta_names:
            dst = "rope.freqs"
        else:  # ...layers.3.self_attn.q_proj.weight -> ...layers.3.self_attn.rotary_emb.inv_freq
            dst = ".".join(name.split(".")[:-2] + ["rotary_emb", "inv_freq"])
        if dst in self._added:
            return []
        self._added.add(dst)
        spec = self.spec

        def make():
            import torch

            from ..frequencies import inv_freq as inv_freq_of

            # the exact float64 frequencies, rounded once to float32 (the dtype transformers keeps them in)
            return inv_freq_of(spec)[0].to(torch.float32)

        return [Step("add", None, dst, "inv_freq", "F32", (spec.n_pairs,), make)]


def verify_inv_freq(ckpt: Checkpoint, spec: RopeSpec) -> tuple[float, int]:
    """(max |stored - exact|, how many) over every stored inv_freq; RopeCheckpointError when one is
    not finite or off by more than its dtype can explain (32 ulp for fp32/fp64: transformers
    computes them in fp32 with pow; 2 ulp for 16-bit)."""
    import torch

    from ..frequencies import inv_freq as inv_freq_of

    exact, _ = inv_freq_of(spec)
    worst, count = 0.0, 0
    for name in ckpt.names():
        if role_of(name) != "inv_freq":
            continue
        stored = ckpt.tensor(name)
        count += 1
        if tuple(stored.shape) != tuple(exact.shape):
            raise RopeCheckpointError(
                f"tensor {name} has shape {list(stored.shape)} but the spec has {exact.numel()} frequencies "
                f"(rotary_dim={spec.rotary_dim})"
            )
        if not stored.dtype.is_floating_point:
            raise RopeCheckpointError(f"tensor {name} has dtype {stored.dtype}; frequencies are floating point")
        bad = ~torch.isfinite(stored)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise RopeCheckpointError(f"tensor {name} holds a non-finite frequency (index {i}: {stored[i].item()})")
        diff = (stored.to(torch.float64) - exact).abs()
        rel_all = diff / exact.abs().clamp_min(1e-300)
        rel = rel_all.max().item()
        tol = (32 if stored.element_size() >= 4 else 2) * torch.finfo(stored.dtype).eps
        worst = max(worst, diff.max().item())
        if not rel <= tol:
            i = int(rel_all.argmax())
            raise RopeCheckpointError(
                f"tensor {name} disagrees with the spec (base={spec.base:g}, rotary_dim={spec.rotary_dim}, "
                f"scaling={spec.scaling.kind if spec.scaling else None}): max |diff| {diff.max().item():.3e}, "
                f"relative {rel:.3e} > {tol:.1e} "
                f"(frequency {i}: stored {stored[i].item():.9g}, expected {exact[i].item():.9g})"
            )
    return worst, count
