"""fingerprint: what rotary embedding does a black-box function apply?

``fn(x[n, head_dim], positions[n]) -> rotated x`` is probed with unit basis vectors (1.0 is exact
in every float dtype) at a ladder of positions, so each output element is a single table value
times one: an fp16/bf16 implementation only rounds it relatively, and nothing cancels.  Column j
of the probe at position p is ``M(p) e_j``; a RoPE makes ``M(p)`` block-diagonal with 2x2 rotations
``af * [[cos, -sin], [sin, cos]]`` on its pairs.

Identifiability, and how the probe respects it:

* Integer positions only see each frequency modulo 2*pi; we report the representative in
  (-pi, pi] (every real RoPE has theta <= 1).
* The angle of pair i at position p is ``direction * theta_i * (p + offset)``.  Consecutive
  positions 0..8 differ by ``theta_i`` exactly once unwrapped (no aliasing since theta < pi), which
  gives a coarse theta and the direction.  Longer positions (16 .. 2**20, each 4x the last) are
  unwrapped against the prediction of the previous step, so theta's precision grows ~ 1/position.
* The offset is only known modulo ``2 pi / theta_i`` from pair i; walking from the slowest pair to
  the fastest pins it to a single value (rounded to an integer when it is one).
* The precision fn really has is measured, not assumed from the dtype it returns: the basis-vector
  outputs are single table values, so the narrowest format holding all of them (bfloat16, float16,
  float32) is the precision of fn's tables (``ropekit.doctor.precision``); a RoPE rounded to
  bfloat16 inside a float32 interface is fitted within bfloat16 rounding and reported as such.
* Parametric families are then *verified*, not assumed: every candidate spec (plain, linear,
  llama3, yarn, longrope-like; bases and factors snapped to short decimals first) is rebuilt with
  ropekit's own frequencies and must reproduce every probed value within the tolerance of fn's
  dtype, with float64 tables (``precision="exact"``), with transformers' float32 tables
  (``"hf"``), or within float32 angle-rounding bounds (``"float32"``: float32 angles computed in
  another order).  No candidate passing means ``spec is None`` and ``reason`` says why.
* Some parameters are not identifiable from a rotation at all: NTK-by-alpha is a plain RoPE with
  base ``base * alpha ** (r / (r - 2))``; llama3's (original_max_position_embeddings,
  low_freq_factor, high_freq_factor) only as two ratios; yarn's (beta_fast, beta_slow, original
  context) only through the two ramp bounds.  The fit picks the conventional value of the free one
  (8192 for llama3, beta 32/1 for yarn) and says so in ``notes``.
* Dynamic NTK scaling changes the base with the longest position *in the call*: one call up to
  ``max_position`` sees a plain RoPE with the base of that length (and ``notes`` names it as
  NTK-by-alpha); probe with ``max_position`` below the original context to see the unscaled base.

>>> import ropekit as rk
>>> fp = rk.fingerprint(rk.zoo.meta_complex(head_dim=64), head_dim=64)
>>> fp.spec.layout, fp.spec.rotary_dim, fp.spec.base, fp.offset, fp.direction
('interleaved', 64, 10000.0, 0, 1)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..errors import RopeError
from ..spec import RopeSpec
from .angles import Frequencies, measure_frequencies, measure_offset
from .arguments import check_dtype, check_head_dim, check_max_position, check_seed
from .calls import RopeFn, call_rope, call_twice
from .fitting import candidates, low_precision_fit, ntk_alpha_notes
from .precision import Precision, measured_precision, unit_eps
from .structure import Blocks, NotARope, check_linear, find_pairs, layout_of, rotation_blocks
from .verification import first_verified, spec_rope_fn

__all__ = ["fingerprint", "Fingerprint", "SMALL_POSITIONS", "long_positions", "call_rope", "spec_rope_fn"]

#: consecutive positions: their angle differences are theta itself (no aliasing while theta < pi)
SMALL_POSITIONS = tuple(range(9))
_LADDER = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
#: random vectors per position for the linearity check
_N_RANDOM = 2


def long_positions(max_position: int) -> tuple[int, ...]:
    """The refinement ladder (each 4x the last) up to ``max_position``.

    >>> long_positions(1000)
    (16, 64, 256)
    """
    return tuple(p for p in _LADDER if p <= max_position)


# ---------------------------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------------------------


@dataclass
class Fingerprint:
    """What ``fingerprint`` found.  ``spec`` (with ``offset`` and ``direction``) explains fn within
    ``tolerance`` at every probed position when it is not None; ``reason`` says why it is None.
    ``output_precision`` is the precision fn's outputs really carry (``"bfloat16"`` for a RoPE
    rounded to bf16 inside a float32 interface), ``noise_ulps`` the misfit in its ulps."""

    head_dim: int
    dtype: torch.dtype  # dtype fn returned
    spec: RopeSpec | None
    inv_freq: torch.Tensor  # float64, one per rotating pair (pair order of the layout)
    offset: float | int
    direction: int
    residual: float  # max abs misfit of the fitted rotation over all probed values
    tolerance: float
    attention_factor: float
    pairs: list[tuple[int, int]]
    layout: str | None
    rotary_dim: int
    base: float | None
    scaling: str  # plain | linear | llama3 | yarn | longrope-like | unknown | none
    precision: str | None  # exact | hf | float32 | inv_freq:<dtype> | angles:<dtype> | None
    positions: tuple[int, ...]
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    output_precision: str = "float32"
    significand_bits: int = 24
    noise_ulps: float = math.inf

    @property
    def rotating_dims(self) -> list[int]:
        return sorted(d for pair in self.pairs for d in pair)

    @property
    def is_rope(self) -> bool:
        return self.spec is not None

    @property
    def rounded_inside(self) -> bool:
        """fn's outputs carry less precision than the dtype it returns."""
        return self.output_precision != str(self.dtype).replace("torch.", "")

    def summary(self) -> str:
        """One line for people.

        >>> import ropekit as rk
        >>> rk.fingerprint(rk.zoo.offset_by_one(16), 16).summary()
        'half r=16/16 base=10000 offset=+1 precision=hf residual=0.0e+00 (float32)'
        """
        if self.spec is None:
            return f"no RoPE explains fn: {self.reason}"
        parts = [self.spec.describe()]
        if self.offset:
            parts.append(f"offset={self.offset:+g}")
        if self.direction < 0:
            parts.append("direction=-1 (rotates backwards)")
        parts.append(f"precision={self.precision}")
        dtype = str(self.dtype).replace("torch.", "")
        if self.rounded_inside:
            parts.append(f"residual={self.residual:.1e} (outputs rounded to {self.output_precision} inside {dtype})")
        else:
            parts.append(f"residual={self.residual:.1e} ({dtype})")
        return " ".join(parts)

    def to_dict(self) -> dict:
        """JSON-safe summary (the CLI's ``--json``)."""
        return {
            "spec": None if self.spec is None else self.spec.to_dict(),
            "layout": self.layout,
            "rotary_dim": self.rotary_dim,
            "base": self.base,
            "scaling": self.scaling,
            "attention_factor": self.attention_factor,
            "offset": self.offset,
            "direction": self.direction,
            "precision": self.precision,
            "residual": self.residual,
            "tolerance": self.tolerance,
            "dtype": str(self.dtype).replace("torch.", ""),
            "output_precision": self.output_precision,
            "significand_bits": self.significand_bits,
            "noise_ulps": self.noise_ulps if math.isfinite(self.noise_ulps) else None,
            "inv_freq": self.inv_freq.tolist(),
            "reason": self.reason,
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """fn's answers: ``M[p, out, j] = fn(e_j, p)[out]`` and the random vectors' outputs."""

    positions: tuple[int, ...]
    pos: torch.Tensor
    M: torch.Tensor  # float64 [P, D, D]
    x_rand: torch.Tensor  # float64 [P, k, D]
    y_rand: torch.Tensor
    out_dtype: torch.dtype
    precision: Precision
    eps: float  # unit roundoff the fit judges fn's values with


def run_probe(fn: RopeFn, D: int, dtype: torch.dtype, max_position: int, device, seed: int) -> Probe:
    """One call (made twice: fn must be deterministic): every basis vector at every position, plus
    random vectors for linearity."""
    positions = SMALL_POSITIONS + long_positions(max_position)
    P = len(positions)
    pos = torch.tensor(positions, dtype=torch.int64, device=device)
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn(P * _N_RANDOM, D, generator=gen, dtype=torch.float64).to(dtype)
    x = torch.cat((torch.eye(D, dtype=dtype).repeat(P, 1), rand)).to(device)
    x_pos = torch.cat((pos.repeat_interleave(D), pos.repeat_interleave(_N_RANDOM)))
    y = call_twice(fn, x, x_pos)
    out_dtype = y.dtype
    y = y.to(torch.float64)
    if not torch.isfinite(y).all():
        bad = int(x_pos[~torch.isfinite(y).all(-1)].min())
        raise RopeError(
            f"fn returned non-finite values for finite inputs, first at position {bad} (an implementation "
            f"computing positions or angles in float16 overflows past 65504: pass max_position below that)"
        )
    M = y[: P * D].view(P, D, D).transpose(1, 2)
    precision = measured_precision(y[: P * D], out_dtype, fallback=y[P * D :])
    eps = max(precision.eps, unit_eps(dtype))
    y_rand, x_rand = y[P * D :].view(P, _N_RANDOM, D), rand.double().view(P, _N_RANDOM, D)
    return Probe(positions, pos.cpu(), M, x_rand, y_rand, out_dtype, precision, eps)


def fit_families(f: Frequencies, b: Blocks, probe: Probe, offset, r: int, D: int, layout: str, tol: float):
    """(spec, family, precision, misfit, notes) of the simplest family that reproduces every probed
    value, or None."""
    eps, pos, af = probe.eps, probe.pos, b.attention_factor
    cands = list(candidates(f.theta, r, D, layout, af, f.last_p, eps))
    parametric = [c for c in cands if c[1] != "longrope-like"]
    longrope = [c for c in cands if c[1] == "longrope-like"]
    found = first_verified(parametric, b.C, b.S, pos, offset, f.direction, tol, af)
    if found is None:
        # a plain/linear RoPE whose frequencies or angles were rounded to bf16/fp16 (an inv_freq
        # buffer that followed model.to(bfloat16), angles under autocast): name that, before a
        # per-pair longrope fit "explains" the rounded frequencies as a scaling
        low = low_precision_fit(f.theta, f.theta_coarse, b.C, b.S, pos, offset, f.direction, r, D, layout, af, tol)
        if low is not None:
            spec, precision, misfit, note = low
            family = "plain" if spec.scaling is None else spec.scaling.kind
            return spec, family, precision, misfit, [note]
        found = first_verified(longrope, b.C, b.S, pos, offset, f.direction, tol, af)
    if found is None:
        return None
    notes = list(found.notes)
    if r == 2:
        notes.append("rotary_dim=2: the half and interleaved layouts coincide")
    if found.family == "plain":
        notes.extend(ntk_alpha_notes(found.spec.base, r, sigma_rel=4 * eps / f.last_p))
    if found.precision == "float32":
        notes.append(
            "matches only up to float32 angle rounding (neither ropekit's exact nor transformers' float32 "
            "tables bit for bit)"
        )
    return found.spec, found.family, found.precision, found.misfit, notes


# ---------------------------------------------------------------------------------------------
# fingerprint
# ---------------------------------------------------------------------------------------------


def fingerprint(
    fn: RopeFn,
    head_dim: int,
    *,
    dtype: torch.dtype = torch.float32,
    max_position: int = 2**20,
    device=None,
    seed: int = 0,
) -> Fingerprint:
    """Fingerprint the rotary embedding a black-box ``fn(x[n, head_dim], positions[n])`` applies.

    ``dtype`` is the dtype of the probe tensors fn receives (use the dtype the implementation runs
    in, e.g. ``torch.bfloat16``); ``max_position`` caps the probed positions (fn must accept them).
    fn is called twice on the same input (it must be deterministic), each time on its own copy.
    Returns a :class:`Fingerprint`: ``.spec`` (a RopeSpec, or None when no RoPE explains fn, with
    ``.reason``), ``.inv_freq`` (float64), ``.offset``, ``.direction``, ``.residual``,
    ``.precision``, ``.output_precision``, ``.summary()``.

    >>> import ropekit as rk
    >>> fp = rk.fingerprint(rk.zoo.llama31_scaled(), head_dim=128)
    >>> fp.spec.scaling.kind, fp.spec.scaling.factor, fp.precision
    ('llama3', 8.0, 'hf')
    """
    t0 = time.perf_counter()
    D = check_head_dim(head_dim)
    check_dtype(dtype)
    check_max_position(max_position, 16)
    check_seed(seed)
    probe = run_probe(fn, D, dtype, max_position, device, seed)
    found: dict = {}
    try:
        fields = _stages(probe, D, found)
    except NotARope as refusal:
        fields = {**found, **refusal.fields, "reason": refusal.reason}
    return _result(probe, D, t0, **fields)


def _stages(probe: Probe, D: int, found: dict) -> dict:
    """Structure -> angles -> families; fills ``found`` as it goes (a refusal keeps it)."""
    eps = tol = probe.eps  # one rounding of a value in [-1, 1] is half of this
    check_linear(probe.M, probe.x_rand, probe.y_rand, eps)
    pairs, diag_err = find_pairs(probe.M, tol)
    layout, pairs = layout_of(pairs)
    r = 2 * len(pairs)
    found.update(pairs=pairs, rotary_dim=r, layout=layout)
    blocks = rotation_blocks(probe.M, pairs, diag_err, tol)
    af = blocks.attention_factor
    tol = eps * max(1.0, af)
    found.update(tolerance=tol)
    phi = torch.atan2(blocks.S, blocks.C)
    freqs = measure_frequencies(phi, probe.pos, len(SMALL_POSITIONS), tol)
    offset = measure_offset(freqs, eps)
    found.update(offset=offset, direction=freqs.direction, attention_factor=af, inv_freq=freqs.theta.clone())
    ang = (probe.pos.double() + offset)[:, None] * freqs.theta[None]
    measured_fit = max(
        (blocks.C - af * torch.cos(ang)).abs().max().item(),
        (blocks.S - freqs.direction * af * torch.sin(ang)).abs().max().item(),
    )
    found.update(residual=max(measured_fit, blocks.structure_err))
    if layout is None:
        dims = sorted(d for pr in pairs for d in pr)
        raise NotARope(
            f"the rotating dims {dims[:8]}{'...' if len(dims) > 8 else ''} are paired as {pairs[:4]}..., which "
            f"is neither the half nor the interleaved layout over leading dims"
        )
    fit = fit_families(freqs, blocks, probe, offset, r, D, layout, tol)
    if fit is None:
        raise NotARope(
            f"no plain/linear/llama3/yarn/longrope spec reproduces the measured frequencies (best per-pair fit "
            f"misses by {measured_fit:.3g}); see inv_freq"
        )
    spec, family, precision, misfit, notes = fit
    residual = max(misfit, blocks.structure_err, blocks.block_err)
    fitted = dict(spec=spec, base=spec.base, scaling=family, precision=precision, residual=residual, notes=notes)
    return {**found, **fitted}


def _result(probe: Probe, D: int, t0: float, **fields) -> Fingerprint:
    pr = probe.precision
    base = dict(
        head_dim=D,
        dtype=probe.out_dtype,
        spec=None,
        inv_freq=torch.zeros(0, dtype=torch.float64),
        offset=0,
        direction=1,
        residual=math.inf,
        tolerance=probe.eps,
        attention_factor=1.0,
        pairs=[],
        layout=None,
        rotary_dim=0,
        base=None,
        scaling="unknown",
        precision=None,
        positions=probe.positions,
        output_precision=pr.name,
        significand_bits=pr.bits,
    )
    base.update(fields)
    notes = list(base.pop("notes", []))
    if pr.narrower:
        notes.insert(0, pr.text() + ": fitted within that precision")
    scale = unit_eps(pr.dtype) * max(1.0, base["attention_factor"])
    noise = base["residual"] / scale if math.isfinite(base["residual"]) else math.inf
    return Fingerprint(**base, notes=notes, noise_ulps=noise, seconds=time.perf_counter() - t0)
