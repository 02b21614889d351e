"""``...rotary_emb.inv_freq`` in old checkpoints: verified against the spec, then dropped.

Checkpoints saved by transformers before 4.31 (and converted ones since) carry each layer's
``inv_freq`` buffer.  ropekit's rotary modules hold no buffers, so a strict ``load_state_dict``
would refuse those keys as unexpected; instead the value is compared with what the spec gives in
transformers' float32 arithmetic and the key is dropped.  A checkpoint whose frequencies disagree
(another base, another scaling) is refused with the key, the largest relative difference and the
spec it was compared with: loading it silently would run the model with the wrong RoPE.

>>> import torch, ropekit as rk
>>> spec = rk.RopeSpec(head_dim=8, base=10000.0)
>>> good = 1.0 / 10000.0 ** (torch.arange(0, 8, 2).float() / 8)
>>> check_inv_freq(good, [spec], "model.layers.0.self_attn.rotary_emb.inv_freq")
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import RopeCheckpointError
from ..frequencies import inv_freq
from ..spec import RopeSpec

__all__ = ["check_inv_freq", "INV_FREQ_KEY"]

INV_FREQ_KEY = "inv_freq"


def _mismatch(stored: torch.Tensor, spec: RopeSpec) -> float:
    """Largest relative difference, in units of the stored dtype's epsilon (inf: shapes differ)."""
    want, _ = inv_freq(spec, precision="exact")
    if stored.dim() != 1 or stored.numel() != want.numel():
        return float("inf")
    eps = torch.finfo(stored.dtype).eps if stored.is_floating_point() else 1.0
    rel = ((stored.double().cpu() - want) / want.clamp_min(1e-300)).abs().max().item()
    return rel / eps


def check_inv_freq(stored, specs: Iterable[RopeSpec], key: str) -> None:
    """Accept ``stored`` when it equals one spec's inverse frequencies to its dtype's rounding.

    Two epsilons of slack: transformers' float32 ``1 / base ** (2i / r)`` rounds twice.
    """
    specs = list(specs)
    if not isinstance(stored, torch.Tensor) or not stored.is_floating_point():
        raise RopeCheckpointError(f"{key} must be a floating-point tensor of inverse frequencies, got {stored!r}")
    errors = [_mismatch(stored, s) for s in specs]
    if min(errors, default=float("inf")) <= 2.0:
        return
    described = "; ".join(s.describe() for s in specs)
    shown = "different length" if min(errors) == float("inf") else f"off by {min(errors):.3g} eps of {stored.dtype}"
    raise RopeCheckpointError(
        f"{key} (shape {list(stored.shape)}) does not match the model's RoPE ({described}): {shown}; "
        f"the checkpoint was saved with another base or scaling"
    )
