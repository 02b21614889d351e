"""RotaryEmbedding: a transformers-compatible rotary module backed by ropekit's exact tables.

It answers both forward signatures transformers has used:

* ``forward(x, position_ids, layer_type=None) -> (cos, sin)`` of shape ``position_ids.shape +
  (rotary_dim,)`` (transformers >= 4.38; ``layer_type`` for per-layer-type models like Gemma 3),
* ``forward(x, seq_len=n) -> (cos, sin)`` of shape ``(n, rotary_dim)`` (the legacy form),

in ``x.dtype``, attention factor included, duplicated the way transformers' modules duplicate
(``cat((c, c))`` for almost every family, ``repeat_interleave`` for Cohere: ``duplicate="repeat"``).

Numerics: the module holds *no floating-point buffers*.  transformers' ``inv_freq`` buffer is
cast by ``model.to(torch.bfloat16)`` (bf16 frequencies are wrong by up to 0.4% — hundreds of
radians at long positions); here frequencies live in the spec and are evaluated in float64 on
every call (``precision="exact"``), or with transformers' float32 arithmetic (``"hf"``) for
bit-for-bit reproduction of an existing model.

>>> import torch, ropekit as rk
>>> rope = rk.RotaryEmbedding(spec=rk.RopeSpec(head_dim=64, base=10000.0))
>>> x = torch.zeros(1, dtype=torch.bfloat16)
>>> cos, sin = rope(x, torch.arange(10)[None])
>>> tuple(cos.shape), cos.dtype
((1, 10, 64), torch.bfloat16)
>>> rope = rope.to(torch.bfloat16)              # frequencies are not touched
>>> torch.equal(rope(x, torch.arange(10)[None])[0], cos)
True
"""

from __future__ import annotations

import torch

from ..errors import RopeShapeError, RopeSpecError
from ..frequencies import check_precision
from ..spec import RopeSpec
from ..tables import cos_sin

__all__ = ["RotaryEmbedding"]

DUPLICATE = ("cat", "repeat")


class RotaryEmbedding(torch.nn.Module):
    """Drop-in for a transformers ``*RotaryEmbedding`` module.

    Build it from a config (anything ``ropekit.from_config`` reads; per-layer-type configs get one
    spec per layer type) or from ``spec=`` (one RopeSpec, or a dict ``{layer_type: RopeSpec}``).
    """

    def __init__(self, config=None, *, spec=None, precision: str = "exact", duplicate: str = "cat"):
        super().__init__()
        if (config is None) == (spec is None):
            raise RopeSpecError("pass exactly one of config= or spec= to RotaryEmbedding")
        if config is not None:
            spec = _specs_from_config(config)
        if isinstance(spec, RopeSpec):
            spec = {None: spec}
        if not isinstance(spec, dict) or not spec or not all(isinstance(s, RopeSpec) for s in spec.values()):
            raise RopeSpecError(f"spec={spec!r} must be a RopeSpec or a dict of layer_type -> RopeSpec")
        if duplicate not in DUPLICATE:
            raise RopeSpecError(f"duplicate={duplicate!r} must be one of {DUPLICATE}")
        self.specs: dict[str | None, RopeSpec] = dict(spec)
        self.precision = check_precision(precision)
        self.duplicate = duplicate

    # transformers code and users sometimes read these attributes
    @property
    def spec(self) -> RopeSpec:
        return self._spec_for(None)

    @property
    def attention_scaling(self) -> float:
        from ..frequencies import attention_factor

        return attention_factor(self.spec)

    def _spec_for(self, layer_type) -> RopeSpec:
        if layer_type in self.specs:
            return self.specs[layer_type]
        if layer_type is None and len(self.specs) == 1:
            return next(iter(self.specs.values()))
        raise RopeSpecError(f"layer_type={layer_type!r} is not one of {sorted(map(str, self.specs))}")

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        layer_type: str | None = None,
        *,
        seq_len: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise RopeShapeError("x must be a floating-point tensor (only its dtype and device are used)")
        if position_ids is None:
            if seq_len is None:
                raise RopeShapeError("pass position_ids (transformers >= 4.38) or seq_len= (legacy forward)")
            position_ids = torch.arange(int(seq_len), device=x.device)
        spec = self._spec_for(layer_type)
        # transformers' rule for dynamic/longrope: the sequence length is max(position_ids) + 1
        cos, sin = cos_sin(
            spec,
            position_ids.to(x.device),
            dtype=torch.float32 if self.precision == "hf" else torch.float64,
            device=x.device,
            precision=self.precision,
        )
        if self.duplicate == "cat":
            cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        else:
            cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        return cos.to(x.dtype), sin.to(x.dtype)

    def extra_repr(self) -> str:
        lines = [f"{k or 'default'}: {s.describe()}" for k, s in self.specs.items()]
        return f"precision={self.precision!r}, duplicate={self.duplicate!r}, " + "; ".join(lines)


def _specs_from_config(config) -> dict[str | None, RopeSpec]:
    from ..dialects import from_config

    layer_types = _layer_types(config)
    if not layer_types:
        return {None: from_config(config)}
    return {lt: from_config(config, layer_type=lt) for lt in layer_types}


def _layer_types(config) -> list[str]:
    """Distinct layer types of a per-layer-type config whose rope parameters are nested by type."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    params = get("rope_parameters")
    types = get("layer_types") or []
    if isinstance(params, dict) and any(t in params for t in types):
        return list(dict.fromkeys(types))
    return []
