"""Measure a transformers family's RoPE from its own modeling code.

For a family that is not in ``hf_config.FAMILIES``, ropekit does not guess: when transformers is
importable it builds that family's rotary module from the config, calls it, and probes the
family's ``apply_rotary_pos_emb`` with q/k vectors.  A spec is returned only when

* ropekit's ``precision="hf"`` tables equal the module's own (see ``TABLE_TOL``), and
* exactly one layout and direction reproduces the attention scores ``q_m . k_n`` of the
  family's apply function (scores, not rotated vectors: some families write their output in
  another order).  The direction is measured like the layout: a family whose apply turns pairs
  by -angle (NanoChat's rotate_half negates sin) gets ``angle_sign=-1``, and its source says so;
* for a module with mRoPE sections, the tables at distinct per-axis positions equal too: a named
  section kind, or the axis of each pair measured (``measured_axes``).

Anything else is refused with the reason.  The spec's ``source`` says that it was measured.

>>> import ropekit as rk
>>> from transformers import LlamaConfig
>>> cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4)
>>> measure(cfg).spec.layout
'half'
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any

from ..errors import RopeConfigError, RopeError
from .image_rotaries import adapter_of, call_on_grid, image_spec, refusal_of
from .measured_axes import axis_positions, measure_axes
from .rotary_modules import (
    SAMPLE_POSITIONS,
    apply_function_of,
    call_rotary,
    check_rope_sub_configs,
    compact_tables,
    module_failed,
    no_rope_layer_types,
    one_thread,
    pick_rotary,
    probe_scores,
    rotary_classes,
)

__all__ = [
    "Measurement",
    "Probe",
    "axis_positions",
    "family_layer_types",
    "measure",
    "measure_probe",
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
#: the sequence length the probe's tables are for (dynamic / longrope frequencies depend on it)
_SEQ_LEN = len(SAMPLE_POSITIONS)


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


def _read_spec(cfg, layout: str, layer_type, n_pairs: int):
    """ropekit's reading of the config's keys, with the layout measured and rotary_dim checked."""
    from . import hf_config
    from .reading import Source

    data = cfg.to_dict()

    def read():
        return hf_config.read(Source(data, type(cfg).__name__), layer_type=layer_type, layout=layout)

    try:
        return _fit_slice(read(), n_pairs)
    except RopeConfigError as exc:
        why = str(exc)
        if "gives rotary_dim" in why:  # an odd rotary_dim is the config's own, not a missing key
            raise
        if "is not divisible by" in why:
            # transformers' own rule (module and attention alike): head_dim = hidden_size // heads
            data["head_dim"] = data["hidden_size"] // data["num_attention_heads"]
        elif "head_dim" in why or "hidden_size" in why or "num_attention_heads" in why:
            # the family sizes its heads from keys of its own (d_model, encoder heads ...): the
            # module's table width is the measured truth, so describe the slice it rotates
            data["head_dim"] = 2 * n_pairs
        else:
            raise
    return _fit_slice(read(), n_pairs)


def _fit_slice(spec, n_pairs: int):
    if spec.rotary_dim != 2 * n_pairs:
        # the module rotates another number of dims than the config keys say: describe the slice
        # the module rotates, as ropekit does for DeepSeek's MLA rope part
        spec = spec.replace(head_dim=max(spec.head_dim, 2 * n_pairs), rotary_dim=2 * n_pairs)
    return spec


def family_layer_types(config) -> list[str]:
    """The layer types the family's rotary module keeps a RoPE for (empty: one for all layers)."""
    cls, cfg = pick_rotary(config)
    if cls is None:
        return []
    try:
        types = list(getattr(cls(cfg), "layer_types", None) or [])
    except Exception:
        return []
    return sorted(set(types) - no_rope_layer_types(cfg))


class Probe:
    """A family's own rotary module and apply function, called once on sample positions; a spec
    is then judged against them (``table_err``, ``score_err``, ``axes_err``)."""

    def __init__(self, config, layer_type: str | None = None):
        import torch

        if _transformers() is None:
            raise RopeConfigError("measuring a family's RoPE needs transformers: pip install 'ropekit[hf]'")
        self.family = family = getattr(config, "model_type", None)
        check_rope_sub_configs(config)
        cls, self.config = pick_rotary(config)
        if cls is None:
            raise RopeConfigError(f"model_type={family!r}: transformers has no text RotaryEmbedding for this config")
        self.rotary_class = cls
        if refusal_of(cls) is not None:
            raise RopeConfigError(
                f"model_type={family!r}: {cls.__name__}: {refusal_of(cls)}; refusing rather than guessing"
            )
        #: how to call an image rotary on a grid of patches (None for a token RoPE)
        self.image = adapter_of(cls)
        if layer_type is not None and layer_type in no_rope_layer_types(self.config):
            raise RopeConfigError(
                f"model_type={family!r}: rope_parameters[{layer_type!r}] is null: "
                f"layers of type {layer_type!r} use no RoPE"
            )
        try:
            self.module = module = cls(self.config)
        except Exception as exc:
            raise module_failed(family, cls, self.config, exc, f"{cls.__name__}(config)") from None
        self.layer_types = sorted(set(getattr(module, "layer_types", None) or []) - no_rope_layer_types(self.config))
        if self.layer_types and layer_type is None:
            raise RopeConfigError(
                f"this config has a different RoPE per layer type ({', '.join(self.layer_types)}); "
                f"pass layer_type= one of them"
            )
        self.layer_type = layer_type
        section = getattr(module, "mrope_section", None)
        if isinstance(section, dict):  # one section per layer type (Cohere Compass)
            section = section.get(layer_type)
        #: the mRoPE sections the module itself uses (its default when the config has none)
        self.mrope_section = tuple(section) if section else None
        modeling = importlib.import_module(cls.__module__)
        #: the positions the module was called at: token positions, or [2, N] for a grid of patches
        self.positions = torch.tensor(SAMPLE_POSITIONS)
        try:
            with one_thread():
                if self.image is None:
                    self.raw = call_rotary(module, layer_type)
                else:
                    self.positions, *self.raw = call_on_grid(self.image, modeling, module)
        except Exception as exc:
            raise module_failed(family, cls, self.config, exc, f"calling {cls.__name__}") from None
        self.cos, self.sin, self.form = compact_tables(*self.raw)
        if self.image is not None:
            self.apply_fn = next((getattr(modeling, n) for n in self.image.apply if hasattr(modeling, n)), None)
        else:
            self.apply_fn = apply_function_of(modeling, complex_table=self.raw[1] is None, config=self.config)
        if self.apply_fn is None:
            raise RopeConfigError(f"model_type={family!r}: its modeling module has no apply function to probe")

    @property
    def n_pairs(self) -> int:
        return self.cos.shape[-1]

    def table_err(self, spec) -> float:
        """Max |cos/sin| difference between ropekit's hf tables for ``spec`` and the module's.  A
        family's module returns +angle tables whatever direction its apply function turns (NanoChat
        negates sin in the apply), so they are compared with ``spec.turning_forward()``'s; the
        direction is ``score_err``'s to judge."""
        import torch

        from ..tables import cos_sin

        with one_thread():
            c, s = cos_sin(
                spec.turning_forward(), self.positions, dtype=torch.float32, precision="hf", seq_len=_SEQ_LEN
            )
        if c.shape != self.cos.shape:
            return math.inf
        return max((c - self.cos).abs().max().item(), (s - self.sin).abs().max().item())

    def score_err(self, spec) -> float:
        """Max relative q.k difference between the family's apply function (on the module's own
        tables) and ropekit's rotation by ``spec`` (its direction included: sin negated for -1)."""
        import torch

        from ..apply import apply_rope_qk
        from ..tables import cos_sin

        with one_thread():
            q, k, ref = self._scores(spec)
            cos, sin = cos_sin(spec, self.positions, dtype=torch.float32, precision="hf", seq_len=_SEQ_LEN)
            if spec.rotary_dim != 2 * self.n_pairs:
                return math.inf
            qr, kr = apply_rope_qk(q, k, cos, sin, layout=spec.layout, format="bhsd", backend="reference")
            mine = qr[0, 0] @ kr[0, 0].T
        return ((mine - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()

    def _scores(self, spec):
        """q, k and the family's own q.k scores, its apply function called as its attention calls it
        (an image rotary whose convention is not known: [b, h, s, d] first, then [b, s, h, d])."""
        conventions = [False] if self.image is None else [self.image.heads_last]
        if conventions == [None]:
            conventions = [False, True]
        for i, heads_last in enumerate(conventions):
            try:
                return probe_scores(self.apply_fn, *self.raw, 2 * self.n_pairs, spec.mrope_section, heads_last)
            except Exception as exc:
                if i == len(conventions) - 1:
                    raise RopeConfigError(
                        f"model_type={self.family!r}: probing {self.apply_fn.__name__} failed: {exc!r}"[:400]
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def axes_err(self, spec) -> float:
        """For a module with mRoPE sections: max |cos/sin| difference at distinct temporal / height /
        width (...) positions, one sequence per axis (0.0 for a module without sections)."""
        import torch

        from ..tables import cos_sin

        if self.mrope_section is None:
            return 0.0
        if spec.mrope_section is None or len(spec.mrope_section) != len(self.mrope_section):
            return math.inf
        pos = axis_positions(len(self.mrope_section))
        with one_thread():
            try:
                cos, sin, _ = compact_tables(*call_rotary(self.module, self.layer_type, pos[:, None, :]))
            except Exception as exc:
                raise module_failed(self.family, self.rotary_class, self.config, exc, "per-axis positions") from None
            c, s = cos_sin(spec.turning_forward(), pos, dtype=torch.float32, precision="hf", seq_len=_SEQ_LEN)
        if c.shape != cos.shape:
            return math.inf
        return max((c - cos).abs().max().item(), (s - sin).abs().max().item())


def _slice_of_head(probe: Probe, spec):
    """A partial-rotary spec rotates the LEADING rotary_dim dims of each head.  Where the family's
    apply function takes whole heads, check that: a family that rotates the trailing slice
    (DeepSeek-V4's ``[nope | rope]`` heads) gets a spec of that slice on its own, as ropekit
    describes DeepSeek-V2/V3's MLA rope part.  Returns (spec, note)."""
    import torch

    if spec.head_dim == spec.rotary_dim or probe.raw[1] is None:
        return spec, ""
    params = list(inspect.signature(probe.apply_fn).parameters)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, probe.cos.shape[0], spec.head_dim, generator=gen)
    a, b = probe.raw
    try:
        with torch.no_grad(), one_thread():
            if params[1:3] == ["cos", "sin"]:
                out = probe.apply_fn(x, a[None], b[None])
            elif params[1:3] == ["sin", "cos"]:
                return spec, ""  # GPT-J style [b, s, h, d] with its own rotary_dim slicing: leading
            else:
                out = probe.apply_fn(x, x, a[None], b[None])[0]
    except Exception:  # the attention slices the head itself before the apply: nothing to learn here
        return spec, ""
    keep = spec.head_dim - spec.rotary_dim
    if torch.equal(out[..., spec.rotary_dim :], x[..., spec.rotary_dim :]):
        return spec, ""
    if torch.equal(out[..., :keep], x[..., :keep]):
        return spec.replace(head_dim=spec.rotary_dim), "; the trailing rotary slice of each head, on its own"
    raise RopeConfigError(
        f"model_type={probe.family!r}: {probe.apply_fn.__name__} changes neither only the leading nor only the "
        f"trailing {spec.rotary_dim} of {spec.head_dim} dims; refusing rather than guessing"
    )


def _turn_text(spec) -> str:
    return spec.layout if spec.angle_sign == 1 else f"{spec.layout} by -angle"


def _read_layout(probe: Probe, layout: str, layer_type):
    """ropekit's reading of the probed config in ``layout`` (an image rotary: measured on its grid)."""
    family, name = probe.family, probe.rotary_class.__name__
    if probe.image is not None:
        return image_spec(probe, layout)
    try:
        return _read_spec(probe.config, layout, layer_type, probe.n_pairs)
    except RopeError as exc:
        why = f"model_type={family!r}: {exc}"
        if "must be even" in str(exc):  # odd nominal rotary_dim (head_dim * partial_rotary_factor)
            why += (
                f"; transformers' own {name} then builds {probe.n_pairs} frequencies base**(-2i/odd) "
                f"(tables {2 * probe.n_pairs} wide), which no RopeSpec (base**(-2i/rotary_dim), rotary_dim "
                f"even) describes; set head_dim (released checkpoints of such families do)"
            )
        raise RopeConfigError(why) from None


def measure(config, layer_type: str | None = None) -> Measurement:
    """Measure the RoPE of a transformers ``PretrainedConfig`` from its family's modeling code."""
    return measure_probe(Probe(config, layer_type), layer_type)


def measure_probe(probe: Probe, layer_type: str | None = None) -> Measurement:
    """``measure`` of a family whose module and apply function are already probed."""
    family, name = probe.family, probe.rotary_class.__name__
    results = {}
    for layout in ("half", "interleaved"):
        spec = _read_layout(probe, layout, layer_type)
        # the direction is measured like the layout: +angle first, -angle where +angle fails
        for sign in (1, -1):
            candidate = spec.replace(angle_sign=sign)
            results[candidate] = probe.score_err(candidate)
            if results[candidate] <= SCORE_TOL:
                break
    good = [candidate for candidate, err in results.items() if err <= SCORE_TOL]
    if len(good) != 1:
        errs = ", ".join(f"{_turn_text(c)}: {err:.3g}" for c, err in results.items())
        raise RopeConfigError(
            f"model_type={family!r}: no single layout and direction reproduces its {probe.apply_fn.__name__} "
            f"(relative q.k error {errs}); refusing rather than guessing"
        )
    spec = good[0]
    score_err = results[spec]
    table_err = probe.table_err(spec)
    if not table_err <= TABLE_TOL:
        raise RopeConfigError(
            f"model_type={family!r}: ropekit's reading ({spec.describe()}) differs from {name}'s "
            f"tables by {table_err:.3g}; refusing rather than guessing"
        )
    if probe.image is not None:
        where = f"; an axial image RoPE whose positions are {probe.image.positions}"
        note = f"measured from transformers {_transformers().__version__} {name} and {probe.apply_fn.__name__}{where}"
        return Measurement(spec.replace(source=note), table_err, score_err, note)
    if probe.mrope_section is not None:
        spec = measure_axes(probe, spec, TABLE_TOL)
    spec, where = _slice_of_head(probe, spec)
    if spec.mrope_axes is not None:
        where += "; the position axis of each pair measured at distinct per-axis positions"
    version = _transformers().__version__
    if spec.angle_sign < 0:
        where += "; it turns pairs by -angle (angle_sign=-1, measured)"
    note = f"measured from transformers {version} {name} and {probe.apply_fn.__name__}{where}"
    return Measurement(spec.replace(source=note), table_err, score_err, note)
