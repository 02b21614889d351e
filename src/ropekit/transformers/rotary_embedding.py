"""RotaryEmbedding: a transformers-compatible rotary module backed by ropekit's exact tables.

It answers every signature transformers has used:

* ``forward(x, position_ids, layer_type=None) -> (cos, sin)``, shape ``position_ids.shape +
  (rotary_dim,)`` (4.38 and later; ``layer_type`` for per-layer-type models like Gemma 3),
* ``forward(x, seq_len=n) -> (cos, sin)``, shape ``(n, rotary_dim)`` (the legacy form), with
  the legacy constructor ``RotaryEmbedding(dim, max_position_embeddings, base, device,
  scaling_factor)`` and the ``cos_cached`` / ``sin_cached`` / ``dim`` / ``base`` / ``inv_freq``
  attributes old code reads (see ``legacy``),

in ``x.dtype``, attention factor included, in the table form the config's family uses
(``forms.table_form``: ``cat((c, c))`` for most, ``repeat_interleave`` for Cohere, ``(sin, cos)``
for GPT-J, complex for DeepSeek-V2, one table per mRoPE axis for Qwen2-VL before 5.0).  A spec that
turns by -angle (``angle_sign=-1``, NanoChat) gives the +angle tables NanoChat's own module returns
when built from its config (its apply function turns them back); from ``spec=`` alone, sin negated.

Numerics: the module holds *no floating-point buffers*.  transformers' ``inv_freq`` buffer is
cast by ``model.to(torch.bfloat16)`` (bf16 frequencies are wrong by up to 0.4%: hundreds of
radians at long positions); here frequencies live in the spec and are evaluated in float64 on
every call (``precision="exact"``), or with transformers' float32 arithmetic (``"hf"``) for
bit-for-bit reproduction.  ``inv_freq`` is a property computed from the spec.

Dynamic NTK: by default each call uses the frequencies of its own length (``max(position_ids) +
1``).  ``stateful=True`` reproduces transformers' cache instead: the frequencies grow with the
longest sequence seen and reset when a sequence shorter than the original context arrives (the
legacy ``seq_len`` form only grows, as those releases did).

>>> import torch, ropekit as rk
>>> rope = rk.RotaryEmbedding(spec=rk.RopeSpec(head_dim=64, base=10000.0))
>>> x = torch.zeros(1, dtype=torch.bfloat16)
>>> cos, sin = rope(x, torch.arange(10)[None])
>>> tuple(cos.shape), cos.dtype
((1, 10, 64), torch.bfloat16)
>>> rope = rope.to(torch.bfloat16)              # frequencies are not touched
>>> torch.equal(rope(x, torch.arange(10)[None])[0], cos)
True
>>> legacy = rk.RotaryEmbedding(64, max_position_embeddings=2048, base=10000)   # the 4.37 constructor
>>> tuple(legacy(x, seq_len=5)[0].shape), legacy.dim, tuple(legacy.cos_cached.shape)
((5, 64), 64, (2048, 64))
"""

from __future__ import annotations

import torch

from ..dialects.releases import rules_for, target_release
from ..errors import RopeShapeError, RopeSpecError
from ..frequencies import attention_factor, check_precision
from ..frequencies import inv_freq as _inv_freq
from ..spec import Dynamic, Linear, LongRope, RopeSpec
from ..tables import checked_positions, cos_sin, tables_from
from . import legacy
from .checkpoint_keys import INV_FREQ_KEY, check_inv_freq
from .forms import DUPLICATES, TableForm, table_form, widened

__all__ = ["RotaryEmbedding", "LinearScalingRotaryEmbedding", "DynamicNTKScalingRotaryEmbedding"]

DUPLICATE = DUPLICATES


class RotaryEmbedding(torch.nn.Module):
    """Drop-in for a transformers ``*RotaryEmbedding`` module.

    Build it from a config (anything ``ropekit.from_config`` reads; per-layer-type configs get one
    spec per layer type, ``layer_type=`` keeps one), from ``spec=`` (a RopeSpec, or a dict
    ``{layer_type: RopeSpec}``), or the legacy way from numbers: ``RotaryEmbedding(dim,
    max_position_embeddings=2048, base=10000, device=None, scaling_factor=1.0, scaling=None)``.
    ``duplicate`` (or ``form``) overrides the table form the config's family implies.
    ``legacy_cache`` (default: the legacy constructor) keeps the pre-4.45 rules: ``inv_freq`` and
    ``precision="hf"`` tables with those releases' arithmetic, and a dynamic cache that only grows.
    """

    _legacy_scaling: str | None = None  # set by the legacy subclasses

    def __init__(
        self,
        config=None,
        max_position_embeddings=None,
        base=None,
        device=None,
        scaling_factor=None,
        *,
        dim: int | None = None,
        scaling: str | None = None,
        spec=None,
        precision: str = "exact",
        duplicate: str | None = None,
        form: TableForm | None = None,
        layer_type: str | None = None,
        stateful: bool = False,
        legacy_cache: bool | None = None,
    ):
        super().__init__()
        del device  # no buffers: tables are made on the device of each call's input
        if isinstance(config, int) and not isinstance(config, bool):
            config, dim = None, config
        is_legacy = dim is not None
        if is_legacy:
            if config is not None or spec is not None:
                raise RopeSpecError("pass dim= (the legacy constructor) or config= or spec=, not several")
            spec = legacy.spec_from_legacy(
                dim,
                2048 if max_position_embeddings is None else max_position_embeddings,
                10000.0 if base is None else base,
                scaling=scaling or self._legacy_scaling,
                scaling_factor=scaling_factor,
            )
        elif (config is None) == (spec is None):
            raise RopeSpecError(
                "pass exactly one of config=, spec= or dim= (the legacy constructor) to RotaryEmbedding"
            )
        elif max_position_embeddings is not None or base is not None or scaling_factor is not None:
            raise RopeSpecError("max_position_embeddings, base and scaling_factor belong to the legacy form: pass dim=")
        if config is not None:
            spec = _specs_from_config(config)
            if any(s.axial for s in (spec.values() if isinstance(spec, dict) else [spec])):
                # its module takes the family's own patch positions ([N, 2] ids, a feature map, pixels)
                raise RopeSpecError(
                    f"model_type={_model_type(config)!r} has an axial image RoPE, whose module takes the family's "
                    "own patch positions; RotaryEmbedding stands in for token RoPE modules. Build its tables with "
                    "ropekit.cos_sin(ropekit.from_config(config), positions) (positions [2, N], see spec.source), "
                    "or pass spec= for a module taking ropekit's [2, N] positions"
                )
            form = form or table_form(_model_type(config))
        if isinstance(spec, RopeSpec):
            spec = {None: spec}
        if not isinstance(spec, dict) or not spec or not all(isinstance(s, RopeSpec) for s in spec.values()):
            raise RopeSpecError(f"spec={spec!r} must be a RopeSpec or a dict of layer_type -> RopeSpec")
        if layer_type is not None:
            if layer_type not in spec:
                raise RopeSpecError(f"layer_type={layer_type!r} is not one of {sorted(map(str, spec))}")
            spec = {None: spec[layer_type]}
        if duplicate is not None:
            kept = form or TableForm()
            form = TableForm(duplicate, per_axis=kept.per_axis, direction_in_apply=kept.direction_in_apply)
        self.form = form or TableForm()
        self.specs: dict[str | None, RopeSpec] = dict(spec)
        self.precision = check_precision(precision)
        self.legacy_cache = is_legacy if legacy_cache is None else bool(legacy_cache)
        if not isinstance(stateful, bool):
            raise RopeSpecError(f"stateful={stateful!r} must be a bool")
        self.stateful = stateful
        self.max_seq_len_cached = self.original_max_seq_len = self.max_position_embeddings or 0
        self._frequencies = self._static_frequencies()
        #: the installed release's dynamic NTK rule for calls with position_ids, when state is kept
        self.per_long_call = (self.stateful or self.legacy_cache) and rules_for(target_release()).dynamic_per_long_call

    # -- attributes transformers code and users read -----------------------------------------------

    @property
    def duplicate(self) -> str:
        return self.form.duplicate

    @property
    def spec(self) -> RopeSpec:
        return self._spec_for(None)

    @property
    def dim(self) -> int:
        return self.spec.rotary_dim

    @property
    def base(self) -> float:
        return self.spec.base

    @property
    def max_position_embeddings(self) -> int | None:
        spec = self.spec
        return getattr(spec.scaling, "original_max_position_embeddings", None) or spec.max_position_embeddings

    @property
    def scaling_factor(self) -> float:
        return getattr(self.spec.scaling, "factor", 1.0)

    @property
    def attention_scaling(self) -> float:
        return attention_factor(self.spec)

    @property
    def inv_freq(self) -> torch.Tensor:
        """float32 inverse frequencies of the current state, computed (never a buffer to round)."""
        if self.legacy_cache and self.precision == "hf":
            return legacy.legacy_inv_freq_hf(self.spec, self.max_seq_len_cached)
        inv, _ = _inv_freq(self.spec, seq_len=self._dynamic_len(), precision=self.precision)
        return inv.float()

    @property
    def cos_cached(self) -> torch.Tensor:
        return self._cached(0)

    @property
    def sin_cached(self) -> torch.Tensor:
        return self._cached(1)

    def _cached(self, which: int) -> torch.Tensor:
        n = self.max_seq_len_cached or self.spec.max_position_embeddings
        if not n:
            raise RopeSpecError("cos_cached/sin_cached need max_position_embeddings (the legacy constructor sets it)")
        return self._legacy_tables(n, torch.float32, None)[which]

    def _spec_for(self, layer_type) -> RopeSpec:
        if layer_type in self.specs:
            return self.specs[layer_type]
        if layer_type is None and len(self.specs) == 1:
            return next(iter(self.specs.values()))
        if layer_type is None and "full_attention" in self.specs:
            return self.specs["full_attention"]  # 4.5x models call the global module without a layer type
        raise RopeSpecError(f"layer_type={layer_type!r} is not one of {sorted(map(str, self.specs))}")

    # -- dynamic NTK state ---------------------------------------------------------------------------

    def _is_dynamic(self, spec: RopeSpec) -> bool:
        return isinstance(spec.scaling, Dynamic)

    def _dynamic_len(self) -> int | None:
        return self.max_seq_len_cached if self.stateful or self.legacy_cache else None

    def _update_state(self, spec: RopeSpec, seq_len: int) -> int:
        """transformers' cache rule: grow past the longest sequence seen; reset below the original
        (4.43 on).  Before 4.43 a call longer than the original recomputes for its own length and
        keeps it; shorter calls reuse the last one."""
        original = spec.scaling.original_max_position_embeddings
        if self.per_long_call:
            if seq_len > original:
                self.max_seq_len_cached = seq_len
            return self.max_seq_len_cached
        if seq_len > self.max_seq_len_cached:
            self.max_seq_len_cached = seq_len
        elif seq_len < original < self.max_seq_len_cached:
            self.max_seq_len_cached = original
        return self.max_seq_len_cached

    # -- forward -------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        layer_type: str | None = None,
        *,
        seq_len: int | None = None,
    ):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise RopeShapeError("x must be a floating-point tensor (only its dtype and device are used)")
        if isinstance(position_ids, int) and not isinstance(position_ids, bool):
            position_ids, seq_len = None, position_ids  # forward(x, n): a legacy caller passing seq_len by position
        spec = self._spec_for(layer_type)
        legacy_call = position_ids is None
        if legacy_call:
            if seq_len is None:
                raise RopeShapeError("pass position_ids (transformers >= 4.38) or seq_len= (legacy forward)")
            n = int(seq_len)
            if self.legacy_cache or self.stateful:
                self.max_seq_len_cached = max(self.max_seq_len_cached, n)
            if self.legacy_cache and self.precision == "hf":
                return self._legacy_tables(n, x.dtype, x.device)
            position_ids = torch.arange(n, device=x.device)
        elif not isinstance(position_ids, torch.Tensor):
            raise RopeShapeError(f"position_ids must be a tensor, got {type(position_ids).__name__}")
        length = seq_len
        kept = self.stateful or self.legacy_cache
        if self._is_dynamic(spec) and kept and legacy_call:
            length = self.max_seq_len_cached  # forward(x, seq_len=): the cache only grows (4.37 and before)
        elif self._is_dynamic(spec) and kept and position_ids.numel():
            length = self._update_state(spec, int(position_ids.max().item()) + 1)  # one host read, as transformers
        elif self._is_dynamic(spec) and self.legacy_cache:
            length = self.max_seq_len_cached
        return self._tables(spec, position_ids.to(x.device), x, length)

    def _backwards(self, spec: RopeSpec) -> bool:
        """Whether the tables carry a -angle direction (sin negated): for a spec turning by -angle,
        unless the family's apply function turns them back itself (``TableForm.direction_in_apply``)."""
        return spec.angle_sign < 0 and not self.form.direction_in_apply

    def _tables(self, spec: RopeSpec, position_ids: torch.Tensor, x: torch.Tensor, seq_len):
        work = torch.float32 if self.precision == "hf" else torch.float64
        # +angle tables, sin negated at the end where they carry the direction (exact either way)
        backwards, spec = self._backwards(spec), spec.turning_forward()
        if self.legacy_cache and self.precision == "hf" and isinstance(spec.scaling, Linear):
            angles = legacy.legacy_angles_hf(spec, position_ids, self.max_seq_len_cached)
            return self._shaped(angles.cos(), angles.sin(), x.dtype, backwards)
        if self.form.per_axis and spec.mrope_section is not None:
            # one table per position axis; the family's apply function selects the sections
            if position_ids.dim() == 2:
                position_ids = position_ids.unsqueeze(0).expand(len(spec.mrope_section), *position_ids.shape)
            spec = spec.without_mrope()
        frequencies = self._frequencies.get(spec)
        if frequencies is not None:
            # the frequencies were computed and checked once (recomputing them was a third of an
            # eager decode step's forward); eager calls still check the positions by value, a
            # compiled graph reads none back to the host (that would be a graph break per layer)
            if not torch.compiler.is_compiling():
                position_ids = checked_positions(spec, position_ids)
            cos, sin = tables_from(
                spec, position_ids, *frequencies, dtype=work, device=x.device, precision=self.precision
            )
        else:
            cos, sin = cos_sin(
                spec, position_ids, dtype=work, device=x.device, precision=self.precision, seq_len=seq_len
            )
        return self._shaped(cos, sin, x.dtype, backwards)

    def _static_frequencies(self) -> dict[RopeSpec, tuple]:
        """(inv_freq, attention factor) of every spec whose frequencies do not depend on the
        sequence length (all but dynamic NTK and LongRoPE), computed and checked once."""
        out = {}
        for spec in (s.turning_forward() for s in self.specs.values()):  # the keys _tables looks up
            if isinstance(spec.scaling, (Dynamic, LongRope)):
                continue
            cos_sin(spec, 1, precision=self.precision)  # every check on the spec's frequencies, once
            out[spec] = _inv_freq(spec, precision=self.precision)
            if spec.mrope_section is not None and not spec.axial:  # the per-axis form strips the sections
                plain = spec.without_mrope()
                out[plain] = _inv_freq(plain, precision=self.precision)
        return out

    def _legacy_tables(self, n: int, dtype, device):
        backwards, spec = self._backwards(self.spec), self.spec.turning_forward()
        if self.precision == "hf":
            cos, sin = legacy.legacy_tables_hf(spec, n, max(self.max_seq_len_cached, n))
        else:
            length = max(self.max_seq_len_cached, n) if self._is_dynamic(spec) else None
            cos, sin = cos_sin(spec, n, dtype=torch.float64, seq_len=length)
        cos, sin = (cos, sin) if device is None else (cos.to(device), sin.to(device))
        if not self._shaped_is_pair():
            raise RopeShapeError(f"the legacy seq_len form returns (cos, sin); duplicate={self.duplicate!r} does not")
        return self._shaped(cos, sin, dtype, backwards)

    def _shaped_is_pair(self) -> bool:
        return self.form.duplicate in ("cat", "repeat")

    def _shaped(self, cos: torch.Tensor, sin: torch.Tensor, dtype, backwards: bool = False):
        """Compact tables in the family's form, in ``dtype`` (one cast, at the end); ``backwards``
        negates sin (the rotation by -angle)."""
        if backwards:
            sin = -sin
        dup = self.form.duplicate
        if dup in ("cat", "repeat"):
            return widened(cos, dup).to(dtype), widened(sin, dup).to(dtype)
        if dup == "sin_cos":
            return sin.to(dtype), cos.to(dtype)
        return torch.complex(cos.float(), sin.float())  # complex64, as transformers' torch.polar gives

    # -- old checkpoints -----------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        key = prefix + INV_FREQ_KEY
        if key in state_dict:
            check_inv_freq(state_dict.pop(key), self.specs.values(), key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        lines = [f"{k or 'default'}: {s.describe()}" for k, s in self.specs.items()]
        return f"precision={self.precision!r}, duplicate={self.duplicate!r}, " + "; ".join(lines)


class LinearScalingRotaryEmbedding(RotaryEmbedding):
    """The legacy ``...LinearScalingRotaryEmbedding(dim, max_position_embeddings, base, device, scaling_factor)``."""

    _legacy_scaling = "linear"


class DynamicNTKScalingRotaryEmbedding(RotaryEmbedding):
    """The legacy ``...DynamicNTKScalingRotaryEmbedding(dim, max_position_embeddings, base, device,
    scaling_factor)``."""

    _legacy_scaling = "dynamic"


def _model_type(config) -> str | None:
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    return get("model_type")


def _specs_from_config(config) -> dict[str | None, RopeSpec]:
    from ..dialects import from_config, layer_types_of

    try:
        types = layer_types_of(config)
    except Exception:  # noqa: BLE001 - a config without layer types reads as one spec below
        types = []
    if not types:
        return {None: from_config(config)}
    specs = {lt: from_config(config, layer_type=lt) for lt in types}
    if len(set(specs.values())) == 1:
        return {None: next(iter(specs.values()))}
    return specs
