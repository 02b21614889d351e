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
from typing import Callable

import torch

from .errors import RopeError, RopeShapeError
from .frequencies import attention_factor as spec_attention_factor
from .frequencies import inv_freq as spec_inv_freq
from .spec import Linear, Llama3, LongRope, RopeSpec, Yarn
from .frequencies import _yarn_bounds

__all__ = ["fingerprint", "Fingerprint", "SMALL_POSITIONS", "long_positions", "call_rope", "spec_rope_fn"]

RopeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: consecutive positions: their angle differences are theta itself (no aliasing while theta < pi)
SMALL_POSITIONS = tuple(range(9))
_LADDER = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
_TWO_PI = 2 * math.pi
_F32_EPS = 2.0**-24  # unit roundoff of float32


def long_positions(max_position: int) -> tuple[int, ...]:
    """The refinement ladder (each 4x the last) up to ``max_position``.

    >>> long_positions(1000)
    (16, 64, 256)
    """
    return tuple(p for p in _LADDER if p <= max_position)


def call_rope(fn: RopeFn, x: torch.Tensor, positions: torch.Tensor, name: str = "fn") -> torch.Tensor:
    """Call a black-box rotary function and check that it returned a float tensor shaped like x.

    >>> import torch
    >>> call_rope(lambda x, p: x, torch.ones(2, 4), torch.tensor([0, 1])).shape
    torch.Size([2, 4])
    >>> call_rope(lambda x, p: x[:, :2], torch.ones(2, 4), torch.tensor([0, 1]), "mine")
    Traceback (most recent call last):
    ...
    ropekit.errors.RopeShapeError: mine returned shape [2, 2] for input [2, 4]; they must match
    """
    try:
        y = fn(x, positions)
    except RopeError:
        raise
    except Exception as exc:  # a user's function: say whose call failed and with what
        hint = ""
        if isinstance(exc, (IndexError, RuntimeError)) and int(positions.max()) > 8:
            hint = (" (if fn only supports positions up to a cached length, probe below it: "
                    "max_position=..., CLI --max-position)")
        raise RopeError(
            f"{name}(x[{x.shape[0]}, {x.shape[1]}] {x.dtype}, positions[{positions.shape[0]}] up to "
            f"{int(positions.max())}) raised {type(exc).__name__}: {exc}{hint}"
        ) from exc
    if not isinstance(y, torch.Tensor):
        raise RopeShapeError(f"{name} returned {type(y).__name__}; it must return the rotated tensor")
    if tuple(y.shape) != tuple(x.shape):
        raise RopeShapeError(f"{name} returned shape {list(y.shape)} for input {list(x.shape)}; they must match")
    if not y.is_floating_point():
        raise RopeShapeError(f"{name} returned dtype {y.dtype}; a rotation returns floats")
    return y


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if dtype != torch.float64 else 2.0**-50


def _wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles to (-pi, pi]."""
    return torch.remainder(a + math.pi, _TWO_PI) - math.pi


def _nice(value: float, max_digits: int = 9, rel_tol: float = 1e-3) -> list[float]:
    """Short decimal candidates for a fitted number, shortest first, the raw value last."""
    out: list[float] = []
    for k in range(1, max_digits + 1):
        c = float(f"{value:.{k}g}")
        if c not in out and abs(c - value) <= rel_tol * abs(value):
            out.append(c)
    if value not in out:
        out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------------------------


@dataclass
class Fingerprint:
    """What ``fingerprint`` found.  ``spec`` (with ``offset`` and ``direction``) explains fn within
    ``tolerance`` at every probed position when it is not None; ``reason`` says why it is None."""

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
    precision: str | None  # exact | hf | float32 | None
    positions: tuple[int, ...]
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rotating_dims(self) -> list[int]:
        return sorted(d for pair in self.pairs for d in pair)

    @property
    def is_rope(self) -> bool:
        return self.spec is not None

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
        parts.append(f"residual={self.residual:.1e} ({self.dtype})".replace("torch.", ""))
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
            "inv_freq": self.inv_freq.tolist(),
            "reason": self.reason,
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------------------------------------
# predicting the probe from a spec (what verification compares against)
# ---------------------------------------------------------------------------------------------


def _predict_cs(spec: RopeSpec, pos: torch.Tensor, offset, direction: int, precision: str):
    """cos and sin [P, n] (attention factor included) that ``spec`` gives at ``pos + offset``."""
    factor = spec_attention_factor(spec)
    if precision == "hf":
        inv, _ = spec_inv_freq(spec, precision="hf")
        p = (pos.to(torch.float64) + offset).to(torch.float32)
        ang = p[:, None] * inv[None, :]
        c, s = (ang.cos() * factor).double(), (ang.sin() * factor).double()
    else:
        inv, _ = spec_inv_freq(spec, precision="exact")
        ang = (pos.to(torch.float64) + offset)[:, None] * inv[None, :]
        c, s = torch.cos(ang) * factor, torch.sin(ang) * factor
    return c, s * direction, ang.double().abs()


def spec_rope_fn(spec: RopeSpec, offset=0, direction: int = 1, precision: str = "exact",
                 dtype: torch.dtype | None = None) -> RopeFn:
    """A black-box ``fn(x, positions)`` that applies ``spec`` with ropekit's tables and reference
    rotation (positions shifted by ``offset``; ``direction=-1`` rotates backwards).

    >>> import torch, ropekit as rk
    >>> fn = spec_rope_fn(rk.RopeSpec(head_dim=8))
    >>> fn(torch.eye(8)[:1], torch.tensor([0])).tolist() == torch.eye(8)[:1].tolist()
    True
    """
    from .apply import apply_rope

    def fn(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        c, s, _ = _predict_cs(spec, positions, offset, 1, precision)
        table_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = apply_rope(x[None, :, None, :].to(dtype or x.dtype), c.to(table_dtype), s.to(table_dtype),
                       layout=spec.layout, inverse=direction < 0)
        return y[0, :, 0, :]

    return fn


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
    Returns a :class:`Fingerprint`: ``.spec`` (a RopeSpec, or None when no RoPE explains fn, with
    ``.reason``), ``.inv_freq`` (float64), ``.offset``, ``.direction``, ``.residual``,
    ``.precision``, ``.summary()``.

    >>> import ropekit as rk
    >>> fp = rk.fingerprint(rk.zoo.llama31_scaled(), head_dim=128)
    >>> fp.spec.scaling.kind, fp.spec.scaling.factor, fp.precision
    ('llama3', 8.0, 'hf')
    """
    t0 = time.perf_counter()
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2:
        raise RopeShapeError(f"head_dim={head_dim!r} must be an integer >= 2")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise RopeShapeError(f"dtype={dtype!r} must be a floating-point torch dtype")
    if isinstance(max_position, bool) or not isinstance(max_position, int) or max_position < 16:
        raise RopeShapeError(f"max_position={max_position!r} must be an integer >= 16")
    D = head_dim
    positions = SMALL_POSITIONS + long_positions(max_position)
    P, n_small = len(positions), len(SMALL_POSITIONS)
    pos = torch.tensor(positions, dtype=torch.int64, device=device)

    # -- one call: every basis vector at every position, plus random vectors for linearity ------
    gen = torch.Generator().manual_seed(seed)
    n_rand = 2
    rand = torch.randn(P * n_rand, D, generator=gen, dtype=torch.float64).to(dtype)
    x = torch.cat((torch.eye(D, dtype=dtype).repeat(P, 1), rand)).to(device)
    x_pos = torch.cat((pos.repeat_interleave(D), pos.repeat_interleave(n_rand)))
    y = call_rope(fn, x, x_pos)
    out_dtype = y.dtype
    y = y.detach().to("cpu", torch.float64)
    if not torch.isfinite(y).all():
        bad = int(x_pos[~torch.isfinite(y).all(-1)].min())
        raise RopeError(f"fn returned non-finite values for finite inputs, first at position {bad} (an "
                        f"implementation computing positions or angles in float16 overflows past 65504: "
                        f"pass max_position below that)")
    M = y[: P * D].view(P, D, D).transpose(1, 2)  # M[p, out, j] = fn(e_j, p)[out]
    y_rand, x_rand = y[P * D :].view(P, n_rand, D), rand.double().view(P, n_rand, D)
    eps = max(_eps(out_dtype), _eps(dtype))
    tol = eps  # one rounding of a value in [-1, 1] is half of this

    def result(**kw) -> Fingerprint:
        base = dict(head_dim=D, dtype=out_dtype, spec=None, inv_freq=torch.zeros(0, dtype=torch.float64),
                    offset=0, direction=1, residual=math.inf, tolerance=tol, attention_factor=1.0, pairs=[],
                    layout=None, rotary_dim=0, base=None, scaling="unknown", precision=None, positions=positions)
        base.update(kw)
        return Fingerprint(**base, seconds=time.perf_counter() - t0)

    # -- linearity: random vectors must be M(p) x (fn is linear and treats rows independently) --
    pred_rand = torch.einsum("pod,pkd->pko", M, x_rand)
    scale = x_rand.abs().amax(-1, keepdim=True)
    lin_err = ((y_rand - pred_rand).abs() / (scale * eps)).max().item()
    if lin_err > 16 * D**0.5:
        return result(reason=f"fn is not linear in x (or mixes tokens): a random vector misses the "
                             f"basis-vector prediction by {lin_err:.0f} ulps")

    # -- pairs: each rotating dim has exactly one partner in its column --------------------------
    off = M.abs().amax(0)
    off.fill_diagonal_(0)
    partner = [-1] * D
    for j in range(D):
        col = off[:, j]
        top2 = torch.topk(col, 2).values if D > 2 else torch.cat((col.max().view(1), torch.zeros(1)))
        if top2[0] > tol:
            if top2[1] > tol:
                others = (col > tol).nonzero().flatten().tolist()
                return result(reason=f"dim {j} mixes into several dims {others[:6]}: not a pairwise rotation")
            partner[j] = int(col.argmax())
    for j, k in enumerate(partner):
        if k >= 0 and partner[k] != j:
            return result(reason=f"dim {j} feeds dim {k} but dim {k} feeds dim {partner[k]}: not a pairwise rotation")
    still = [j for j in range(D) if partner[j] < 0]
    diag_err = (M[:, still, still] - 1).abs().max().item() if still else 0.0
    structure_err = diag_err
    if still and diag_err > tol:
        j = still[int((M[:, still, still] - 1).abs().amax(0).argmax())]
        return result(reason=f"dim {j} does not rotate but is not passed through either "
                             f"(|fn(e_{j}) - e_{j}| = {diag_err:.3g})")
    pairs = sorted({(min(j, k), max(j, k)) for j, k in enumerate(partner) if k >= 0})
    if not pairs:
        return result(reason="no dims rotate: fn passes x through unchanged", residual=structure_err,
                      scaling="none")

    # layout: which pairing, over which dims
    dims = sorted(d for pr in pairs for d in pr)
    r, n = len(dims), len(pairs)
    layout = None
    if dims == list(range(r)):
        if pairs == [(i, i + n) for i in range(n)]:
            layout = "half"  # r == 2 is both layouts; "half" by convention
        elif pairs == [(2 * i, 2 * i + 1) for i in range(n)]:
            layout = "interleaved"
    if layout == "half":
        pairs = [(i, i + n) for i in range(n)]
    a = torch.tensor([pr[0] for pr in pairs])
    b = torch.tensor([pr[1] for pr in pairs])
    Maa, Mbb, Mab, Mba = M[:, a, a], M[:, b, b], M[:, a, b], M[:, b, a]
    block_err = max((Maa - Mbb).abs().max().item(), (Mab + Mba).abs().max().item())
    # everything outside the diagonal and the pair entries must be zero
    mask = torch.ones(D, D, dtype=torch.bool)
    mask.fill_diagonal_(False)
    mask[a, b] = False
    mask[b, a] = False
    structure_err = max(structure_err, M[:, mask].abs().max().item() if mask.any() else 0.0)
    C, S = (Maa + Mbb) / 2, (Mba - Mab) / 2  # [P, n]
    if block_err > 2 * tol:
        i = int(torch.maximum((Maa - Mbb).abs(), (Mab + Mba).abs()).amax(0).argmax())
        return result(pairs=pairs, rotary_dim=r, layout=layout, residual=block_err,
                      reason=f"dims {pairs[i]} mix but not as a rotation (misfit {block_err:.3g})")
    amp = torch.sqrt(C * C + S * S)
    af = amp.median().item()
    tol = eps * max(1.0, af)  # values scale with the attention factor, and so does their rounding
    if (amp - af).abs().max().item() > 2 * tol * max(1.0, af):
        return result(pairs=pairs, rotary_dim=r, layout=layout, residual=(amp - af).abs().max().item(),
                      reason=f"the pairs are scaled unevenly (|cos, sin| from {amp.min():.4g} to {amp.max():.4g})")
    phi = torch.atan2(S, C)  # [P, n]

    # -- frequencies: coarse from consecutive positions, refined up the ladder -------------------
    steps = _wrap(phi[1:n_small] - phi[: n_small - 1])  # = direction * theta (theta < pi)
    slope = steps.mean(0)
    signif = slope.abs() > 8 * tol  # slow pairs move too little at p <= 8 to show a sign
    signs = torch.sign(slope[signif])
    if signif.any() and not (signs == signs[0]).all():
        return result(pairs=pairs, rotary_dim=r, layout=layout,
                      reason="pairs rotate in opposite directions: not one RoPE")
    direction = int(signs[0].item()) if signif.any() else 1
    theta = slope * direction
    theta_coarse = theta.clone().clamp_min(0.0)  # from positions 0..8 only: survives rounded angles
    # phase at p = 0 from all small positions (circular mean of phi_p - direction * theta * p)
    small_p = pos[:n_small].double()[:, None]
    resid0 = phi[:n_small] - direction * theta[None] * small_p
    phi0 = torch.atan2(resid0.sin().mean(0), resid0.cos().mean(0))
    last_p = small_p[-1]
    for k in range(n_small, P):
        p = float(positions[k])
        measured = _wrap(phi[k] - phi0)  # direction * theta * p modulo 2 pi
        predicted = direction * theta * p
        unwrapped = measured + _TWO_PI * torch.round((predicted - measured) / _TWO_PI)
        theta = unwrapped * direction / p
        last_p = p
    theta = theta.clamp_min(0.0)

    # -- offset: walk from the slowest pair to the fastest -------------------------------------
    order = torch.argsort(theta)
    o_est, o_err = 0.0, math.inf
    for i in order.tolist():
        th = theta[i].item()
        if th <= 0 or th * last_p < 1e-3:
            continue
        cand = phi0[i].item() * direction / th
        period = _TWO_PI / th
        if math.isfinite(o_err):
            cand += period * round((o_est - cand) / period)
        err = 4 * eps / th
        if err < o_err:
            o_est, o_err = cand, err
    offset: float | int = o_est
    if abs(o_est - round(o_est)) <= max(0.05, 4 * o_err):
        offset = int(round(o_est))
    if not math.isfinite(o_err):
        offset = 0

    common = dict(pairs=pairs, rotary_dim=r, layout=layout, offset=offset, direction=direction,
                  attention_factor=af, inv_freq=theta.clone())

    # -- the measured-frequency residual: how well theta, offset, direction describe fn --------
    ang = (pos.double() + offset)[:, None] * theta[None]
    measured_fit = max((C - af * torch.cos(ang)).abs().max().item(),
                       (S - direction * af * torch.sin(ang)).abs().max().item())
    if layout is None:
        return result(**common, residual=max(measured_fit, structure_err),
                      reason=f"the rotating dims {_dims_text(dims)} are paired as {pairs[:4]}..., which is "
                             f"neither the half nor the interleaved layout over leading dims")

    # -- parametric families, verified against every probed value -----------------------------
    notes: list[str] = []
    # first pass: bit-level fits (exact or hf tables); second pass: float32 angle-rounding bounds
    candidates = list(_candidates(theta, r, D, layout, af, last_p, eps))
    parametric = [c for c in candidates if c[1] != "longrope-like"]
    longrope = [c for c in candidates if c[1] == "longrope-like"]

    def fit(cands):
        for precisions in (("exact", "hf"), ("float32",)):
            for spec, family, cand_notes in cands:
                fits = []
                for precision in precisions:
                    c, s, angle = _predict_cs(spec, pos, offset, direction,
                                              precision if precision != "float32" else "exact")
                    err = torch.maximum((C - c).abs(), (S - s).abs())
                    bound = tol if precision != "float32" else tol + 4 * _F32_EPS * (angle + 1) * max(af, 1.0)
                    if (err <= bound).all():
                        fits.append((err.max().item(), precision))
                if fits:
                    best, precision = min(fits)
                    misfit = max(best, structure_err, block_err)
                    notes.extend(cand_notes)
                    if r == 2:
                        notes.append("rotary_dim=2: the half and interleaved layouts coincide")
                    if family == "plain":
                        notes.extend(_ntk_alpha_notes(spec.base, r, sigma_rel=4 * eps / last_p))
                    if precision == "float32":
                        notes.append("matches only up to float32 angle rounding (neither ropekit's exact nor "
                                     "transformers' float32 tables bit for bit)")
                    return result(**common, spec=spec, base=spec.base, scaling=family, precision=precision,
                                  residual=misfit, notes=notes)
        return None

    found = fit(parametric)
    if found is None:
        # a plain/linear RoPE whose frequencies or angles were rounded to bf16/fp16 (an inv_freq
        # buffer that followed model.to(bfloat16), angles under autocast): name that, before a
        # per-pair longrope fit "explains" the rounded frequencies as a scaling
        low = _low_precision_fit(theta, theta_coarse, C, S, pos, offset, direction, r, D, layout, af, tol)
        if low is not None:
            spec, precision, misfit, note = low
            found = result(**common, spec=spec, base=spec.base,
                           scaling="plain" if spec.scaling is None else spec.scaling.kind,
                           precision=precision, residual=max(misfit, structure_err, block_err), notes=[note])
    if found is None:
        found = fit(longrope)
    if found is not None:
        return found
    return result(**common, residual=max(measured_fit, structure_err), base=None,
                  reason=f"no plain/linear/llama3/yarn/longrope spec reproduces the measured frequencies "
                         f"(best per-pair fit misses by {measured_fit:.3g}); see inv_freq")


#: bases that NTK-by-alpha models start from
_NTK_START_BASES = (10000.0, 500000.0, 1000000.0)


def _ntk_alpha_notes(base: float, r: int, sigma_rel: float) -> list[str]:
    """NTK-by-alpha (``base * alpha ** (r / (r - 2))``) is a plain RoPE with a larger base; when the
    fitted base is such a base with a short alpha, say so (the alpha itself is not identifiable:
    10000 with alpha 8 and 20000 with a smaller alpha rotate identically)."""
    if r <= 2 or base in _NTK_START_BASES:
        return []
    out = []
    for b0 in _NTK_START_BASES:
        if base <= b0:
            continue
        alpha = (base / b0) ** ((r - 2) / r)
        for a in dict.fromkeys(float(f"{alpha:.{k}g}") for k in (1, 2, 3)):  # short alphas only
            implied = b0 * a ** (r / (r - 2))
            # the fitted base is snapped to a short decimal that still reproduces fn; 1e-5 is far
            # tighter than the 3-digit alpha grid (~1e-3), so a match is no coincidence
            if a > 1 and abs(implied - base) <= max(1e-5, 64 * sigma_rel) * base:
                out.append(f"base {base:.10g} = NTK-by-alpha of base {b0:g} with alpha={a:g} "
                           f"({b0:g} * {a:g} ** ({r} / {r - 2})); the two are the same rotation")
                break
    return out[:1]


#: dtypes whose rounding of frequencies / angles the fingerprint recognises
_LOW_DTYPES = (torch.bfloat16, torch.float16)


def _low_precision_fit(theta, theta_coarse, C, S, pos, offset, direction, r, D, layout, af, tol):
    """(spec, precision, misfit, note) when a plain or linear spec explains fn once its inv_freq is
    rounded to bf16/fp16 (angles then in float32: precision ``"inv_freq:bfloat16"``), or once
    ``position * inv_freq`` itself runs in bf16/fp16 (``"angles:bfloat16"``); else None."""
    n = theta.numel()
    if n < 2:
        return None
    x = torch.arange(n, dtype=torch.float64) * 2 / r
    af_spec = None if abs(af - 1.0) <= 2 * tol else float(_nice(af, rel_tol=4 * tol)[0])
    tried = set()
    for th in (theta, theta_coarse):
        usable = th > 0
        if usable.sum() < 2:
            continue
        # rounded frequencies are off by <= 2**-8 relative: a least-squares line through all pairs
        A = torch.stack((torch.ones_like(x), x), 1)[usable]
        sol = torch.linalg.lstsq(A, -torch.log(th[usable])[:, None]).solution.flatten()
        factor, base = math.exp(sol[0].item()), math.exp(sol[1].item())
        factors = [1.0] + ([f for f in _nice(factor, rel_tol=2e-2)[:3] if f > 1] if factor > 1.01 else [])
        for bc in _nice(base, rel_tol=2e-2)[:4]:
            for fc in factors:
                if (bc, fc) in tried:
                    continue
                tried.add((bc, fc))
                try:
                    spec = RopeSpec(head_dim=D, rotary_dim=r, base=bc, layout=layout,
                                    scaling=Linear(factor=fc) if fc > 1 else None, attention_factor=af_spec)
                except RopeError:
                    continue
                inv32 = spec_inv_freq(spec, precision="hf")[0].float()
                scale = spec_attention_factor(spec)
                p32 = (pos.to(torch.float64) + offset).float()
                for dt in _LOW_DTYPES:
                    name = str(dt).replace("torch.", "")
                    for mode in ("inv_freq", "angles"):
                        if mode == "inv_freq":
                            ang = p32[:, None] * inv32.to(dt).float()[None]
                        else:
                            ang = (p32.to(dt)[:, None] * inv32.to(dt)[None]).float()
                        c = ang.cos().double() * scale
                        s_ = ang.sin().double() * scale * direction
                        err = torch.maximum((C - c).abs(), (S - s_).abs()).max().item()
                        if err <= tol + 4 * _F32_EPS * max(af, 1.0):
                            exact = ((pos.to(torch.float64) + offset)[:, None] * spec_inv_freq(spec)[0][None])
                            worst = (ang.double() - exact).abs().max().item()
                            what = (f"inv_freq is rounded to {name} (e.g. a frequency buffer that followed "
                                    f"model.to({name}))" if mode == "inv_freq" else
                                    f"the angles position * inv_freq are computed in {name} (e.g. under autocast)")
                            return spec, f"{mode}:{name}", err, (
                                f"{what}: angles off by up to {worst:.3g} rad at p={int(pos.max())}; the spec "
                                f"is what it was meant to be")
    return None


def _dims_text(dims: list[int]) -> str:
    return f"{dims[:8]}{'...' if len(dims) > 8 else ''}"


# ---------------------------------------------------------------------------------------------
# candidate specs from measured frequencies
# ---------------------------------------------------------------------------------------------


def _candidates(theta: torch.Tensor, r: int, head_dim: int, layout: str, af: float, last_p: float, eps: float):
    """Yield (spec, family, notes), simplest first."""
    n = theta.numel()
    x = torch.arange(n, dtype=torch.float64) * 2 / r  # exponents 2i / r
    # precision of each theta (absolute): angle noise over the longest probed position
    sigma = (4 * eps + 1e-12) / last_p
    ell = -torch.log(theta.clamp_min(1e-300))
    usable = theta > 8 * sigma
    af_spec = None if abs(af - 1.0) <= 2 * eps else af
    af_cands = [None] if af_spec is None else [float(c) for c in _nice(af)]

    def spec(base, scaling=None, attention=None):
        try:
            return RopeSpec(head_dim=head_dim, rotary_dim=r, base=base, layout=layout, scaling=scaling,
                            attention_factor=attention)
        except RopeError:
            return None

    # plain: theta_0 = 1 and log theta linear in x through the origin
    w = (theta / sigma).clamp_max(1e12) * usable
    if n == 1:
        return
    if usable[1:].any():
        L = (w[1:] * x[1:] * ell[1:]).sum() / (w[1:] * x[1:] ** 2).sum()
        base_plain = math.exp(L.item())
    else:
        base_plain = None
    # prefix fit (pairs that keep their frequency: llama3 / yarn high-frequency band)
    base_prefix, prefix = _prefix_base(theta, x, ell, sigma)

    def emit(s, family, notes=()):
        return (s, family, list(notes)) if s is not None else None

    out = []
    if base_plain and abs(theta[0].item() - 1) <= 16 * sigma:
        for bc in _nice(base_plain):
            for ac in af_cands:
                out.append(emit(spec(bc, None, ac), "plain"))
    # linear: theta = base^-x / factor
    if usable.sum() >= 2 and theta[0].item() < 1 - 16 * sigma:
        A = torch.stack((torch.ones_like(x), x), 1)[usable]
        sol = torch.linalg.lstsq(A * w[usable, None], (ell * w)[usable, None]).solution.flatten()
        factor, base_lin = math.exp(sol[0].item()), math.exp(sol[1].item())
        for bc in _nice(base_lin)[:6]:
            for fc in _nice(factor)[:6]:
                for ac in af_cands:
                    out.append(emit(spec(bc, Linear(factor=fc) if fc >= 1 else None, ac), "linear"))
    out = [o for o in out if o is not None]
    yield from out
    if base_prefix is None:
        return
    # bases that reproduce the unscaled leading pairs to their precision, shortest first
    bases = [bc for bc in _nice(base_prefix)
             if ((torch.pow(bc, -x[:prefix]) - theta[:prefix]).abs() <= 16 * sigma + 4 * _F32_EPS * theta[:prefix]).all()]
    bases = bases or [base_prefix]
    for bc in bases[:3]:
        inv0 = torch.pow(bc, -x)
        rho = theta / inv0
        fac = _tail_factor(rho, theta, sigma)
        factors = _nice(fac)[:6] if fac > 1 + 1e-6 else []
        # a yarn ramp can end before any pair is fully scaled; then the slowest pair does not show
        # the factor, but yarn's default attention factor (0.1 ln f + 1) still does
        yarn_only = []
        if af > 1 + 2 * eps:
            # af is measured to ~eps, so f = exp(10 (af - 1)) only to ~10 eps relative
            implied = _nice(math.exp((af - 1) / 0.1), rel_tol=max(1e-3, 20 * eps * af))
            yarn_only = [f for f in implied[:6] if f > 1 and f not in factors]
        for fc in factors + yarn_only:
            g = (rho - 1.0 / fc) / (1 - 1.0 / fc)
            # a pair is inside the blend band only if it is there beyond its own measurement noise
            noise = (8 * sigma / theta.clamp_min(1e-300)) * rho / (1 - 1.0 / fc)
            band = (g > noise.clamp_min(1e-4)) & (g < 1 - noise.clamp_min(1e-4)) & usable
            if fc in factors:
                yield from _llama3_candidates(spec, bc, fc, g, band, inv0, af_cands)
            yield from _yarn_candidates(spec, bc, fc, g, band, r, af, af_cands, 2 * eps * max(1.0, af))
    # longrope-like, last: one divisor per pair explains any frequency set, so it must not shadow
    # a family with fewer parameters
    bc = bases[0]
    ext = tuple(float(v) for v in (torch.pow(bc, -x) / theta.clamp_min(1e-300)).tolist())
    if all(e > 0 and math.isfinite(e) for e in ext):
        lr = LongRope(short_factor=ext, long_factor=ext, original_max_position_embeddings=2**31 - 1)
        s = spec(bc, lr, af_spec)
        if s is not None:
            yield s, "longrope-like", ["per-pair divisors fitted; short and long factors cannot be told "
                                      "apart from one call, so both hold the fitted ones"]


def _tail_factor(rho: torch.Tensor, theta: torch.Tensor, sigma: float) -> float:
    """1 / rho of the fully scaled (slowest) pairs, averaged over all of them: the slowest pair
    alone is the least precise (its angle turns least over the probed positions)."""
    n = rho.numel()
    rel = sigma / theta.clamp_min(1e-300)  # relative precision of each rho
    est, weight = rho[-1].item(), 1.0 / rel[-1].item() ** 2
    for i in range(n - 2, -1, -1):
        err = (rel[i].item() ** 2 + 1.0 / weight) ** 0.5 * est
        if abs(rho[i].item() - est) > 6 * err + 1e-12:
            break
        w = 1.0 / rel[i].item() ** 2
        est = (est * weight + rho[i].item() * w) / (weight + w)
        weight += w
    return 1.0 / est


def _prefix_base(theta, x, ell, sigma):
    """Base from the leading pairs that follow base^-x exactly (theta_0 = 1)."""
    n = theta.numel()
    if n < 2 or abs(theta[0].item() - 1) > 16 * sigma or theta[1].item() <= 8 * sigma:
        return None, 0
    L = ell[1] / x[1]
    k = 2
    while k < n:
        pred = torch.exp(-L * x[k])
        if (pred - theta[k]).abs().item() > 16 * sigma + 1e-9 * theta[k].item():
            break
        w = theta[1 : k + 1] / sigma
        L = (w * x[1 : k + 1] * ell[1 : k + 1]).sum() / (w * x[1 : k + 1] ** 2).sum()
        k += 1
    return math.exp(L.item()), k


_ORIG_CANDIDATES = (8192, 4096, 2048, 16384, 32768, 65536, 131072, 1024, 262144, 512)


def _llama3_candidates(spec, base, factor, g, band, inv0, af_cands):
    # llama3: the kept fraction g is linear in 1 / wavelength = inv0 / 2pi inside the band
    u = inv0 / (2 * math.pi)
    if band.sum() >= 2:
        A = torch.stack((u[band], torch.ones_like(u[band])), 1)
        alpha, beta = torch.linalg.lstsq(A, g[band][:, None]).solution.flatten().tolist()
        if alpha <= 0:
            return
        # alpha = orig / (hff - lff), beta = -lff / (hff - lff): one degree of freedom left (orig)
        options = []
        for orig in _ORIG_CANDIDATES:
            lff = -beta * orig / alpha
            hff = lff + orig / alpha
            options.append((orig, lff, hff))
    else:
        # no pair inside the band: only bounds; try the conventional Llama 3.1 ratios
        options = [(orig, 1.0, 4.0) for orig in _ORIG_CANDIDATES]
    for orig, lff, hff in options:
        if not (lff > 0 and hff > lff):
            continue
        for lc in _nice(lff)[:4]:
            for hc in _nice(hff)[:4]:
                try:
                    sc = Llama3(factor=factor, low_freq_factor=lc, high_freq_factor=hc,
                                original_max_position_embeddings=orig)
                except RopeError:
                    continue
                for ac in af_cands:
                    s = spec(base, sc, ac)
                    if s is not None:
                        yield s, "llama3", [
                            "llama3's original_max_position_embeddings, low_freq_factor and high_freq_factor "
                            f"are identifiable only as ratios; chose original_max_position_embeddings={orig}"]


def _yarn_candidates(spec, base, factor, g, band, r, af, af_cands, af_tol):
    # yarn: the kept fraction is 1 - ramp, linear in the pair index between the bounds
    idx = torch.arange(g.numel(), dtype=torch.float64)
    if band.sum() >= 2:
        A = torch.stack((idx[band], torch.ones_like(idx[band])), 1)
        c1, c0 = torch.linalg.lstsq(A, g[band][:, None]).solution.flatten().tolist()
        if c1 >= 0:
            return
        width = -1.0 / c1
        low = (c0 - 1) * width
        high = low + width
    else:
        kept = (g >= 1 - 1e-4).nonzero().flatten()
        low = float(kept.max()) if kept.numel() else 0.0
        high = low + 1
    for orig in _ORIG_CANDIDATES:
        for truncate in (True, False):
            try:
                sc = Yarn(factor=factor, original_max_position_embeddings=orig, truncate=truncate)
            except RopeError:
                continue
            lo, hi = _yarn_bounds(sc, r, base)
            if abs(lo - low) > 0.02 or abs(hi - high) > 0.02:
                continue
            implied = spec_attention_factor(RopeSpec(head_dim=r, base=base, scaling=sc))
            attn = [None] if abs(implied - af) <= af_tol else af_cands
            for ac in attn:
                s = spec(base, sc, ac)
                if s is not None:
                    yield s, "yarn", ["yarn's beta_fast/beta_slow/original_max_position_embeddings are "
                                      f"identifiable only through the ramp bounds; chose beta 32/1 and "
                                      f"original_max_position_embeddings={orig}"]
