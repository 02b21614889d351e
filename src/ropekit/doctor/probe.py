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
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import RopeError, RopeShapeError
from ..frequencies import attention_factor as spec_attention_factor
from ..frequencies import inv_freq as spec_inv_freq
from ..kernels.reference import eps as eps_of
from ..spec import RopeSpec
from .fitting import F32_EPS as _F32_EPS
from .fitting import candidates as _candidates
from .fitting import low_precision_fit as _low_precision_fit
from .fitting import ntk_alpha_notes as _ntk_alpha_notes

__all__ = ["fingerprint", "Fingerprint", "SMALL_POSITIONS", "long_positions", "call_rope", "spec_rope_fn"]

RopeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: consecutive positions: their angle differences are theta itself (no aliasing while theta < pi)
SMALL_POSITIONS = tuple(range(9))
_LADDER = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
_TWO_PI = 2 * math.pi


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
            hint = (
                " (if fn only supports positions up to a cached length, probe below it: "
                "max_position=..., CLI --max-position)"
            )
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


def _wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles to (-pi, pi]."""
    return torch.remainder(a + math.pi, _TWO_PI) - math.pi


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


def spec_rope_fn(
    spec: RopeSpec, offset=0, direction: int = 1, precision: str = "exact", dtype: torch.dtype | None = None
) -> RopeFn:
    """A black-box ``fn(x, positions)`` that applies ``spec`` with ropekit's tables and reference
    rotation (positions shifted by ``offset``; ``direction=-1`` rotates backwards).

    >>> import torch, ropekit as rk
    >>> fn = spec_rope_fn(rk.RopeSpec(head_dim=8))
    >>> fn(torch.eye(8)[:1], torch.tensor([0])).tolist() == torch.eye(8)[:1].tolist()
    True
    """
    from ..apply import apply_rope

    def fn(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        c, s, _ = _predict_cs(spec, positions, offset, 1, precision)
        table_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = apply_rope(
            x[None, :, None, :].to(dtype or x.dtype),
            c.to(table_dtype),
            s.to(table_dtype),
            layout=spec.layout,
            inverse=direction < 0,
        )
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
        raise RopeError(
            f"fn returned non-finite values for finite inputs, first at position {bad} (an "
            f"implementation computing positions or angles in float16 overflows past 65504: "
            f"pass max_position below that)"
        )
    M = y[: P * D].view(P, D, D).transpose(1, 2)  # M[p, out, j] = fn(e_j, p)[out]
    y_rand, x_rand = y[P * D :].view(P, n_rand, D), rand.double().view(P, n_rand, D)
    # float64 functions get 4 ulps (2**-50): their own fp64 trig is not correctly rounded
    eps = max(eps_of(out_dtype), eps_of(dtype), 2.0**-50)
    tol = eps  # one rounding of a value in [-1, 1] is half of this

    def result(**kw) -> Fingerprint:
        base = dict(
            head_dim=D,
            dtype=out_dtype,
            spec=None,
            inv_freq=torch.zeros(0, dtype=torch.float64),
            offset=0,
            direction=1,
            residual=math.inf,
            tolerance=tol,
            attention_factor=1.0,
            pairs=[],
            layout=None,
            rotary_dim=0,
            base=None,
            scaling="unknown",
            precision=None,
            positions=positions,
        )
        base.update(kw)
        return Fingerprint(**base, seconds=time.perf_counter() - t0)

    # -- linearity: random vectors must be M(p) x (fn is linear and treats rows independently) --
    pred_rand = torch.einsum("pod,pkd->pko", M, x_rand)
    scale = x_rand.abs().amax(-1, keepdim=True)
    lin_err = ((y_rand - pred_rand).abs() / (scale * eps)).max().item()
    if lin_err > 16 * D**0.5:
        return result(
            reason=f"fn is not linear in x (or mixes tokens): a random vector misses the "
            f"basis-vector prediction by {lin_err:.0f} ulps"
        )

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
        return result(
            reason=f"dim {j} does not rotate but is not passed through either (|fn(e_{j}) - e_{j}| = {diag_err:.3g})"
        )
    pairs = sorted({(min(j, k), max(j, k)) for j, k in enumerate(partner) if k >= 0})
    if not pairs:
        return result(reason="no dims rotate: fn passes x through unchanged", residual=structure_err, scaling="none")

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
        return result(
            pairs=pairs,
            rotary_dim=r,
            layout=layout,
            residual=block_err,
            reason=f"dims {pairs[i]} mix but not as a rotation (misfit {block_err:.3g})",
        )
    amp = torch.sqrt(C * C + S * S)
    af = amp.median().item()
    tol = eps * max(1.0, af)  # values scale with the attention factor, and so does their rounding
    if (amp - af).abs().max().item() > 2 * tol * max(1.0, af):
        return result(
            pairs=pairs,
            rotary_dim=r,
            layout=layout,
            residual=(amp - af).abs().max().item(),
            reason=f"the pairs are scaled unevenly (|cos, sin| from {amp.min():.4g} to {amp.max():.4g})",
        )
    phi = torch.atan2(S, C)  # [P, n]

    # -- frequencies: coarse from consecutive positions, refined up the ladder -------------------
    steps = _wrap(phi[1:n_small] - phi[: n_small - 1])  # = direction * theta (theta < pi)
    slope = steps.mean(0)
    signif = slope.abs() > 8 * tol  # slow pairs move too little at p <= 8 to show a sign
    signs = torch.sign(slope[signif])
    if signif.any() and not (signs == signs[0]).all():
        return result(
            pairs=pairs, rotary_dim=r, layout=layout, reason="pairs rotate in opposite directions: not one RoPE"
        )
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

    common = dict(
        pairs=pairs,
        rotary_dim=r,
        layout=layout,
        offset=offset,
        direction=direction,
        attention_factor=af,
        inv_freq=theta.clone(),
    )

    # -- the measured-frequency residual: how well theta, offset, direction describe fn --------
    ang = (pos.double() + offset)[:, None] * theta[None]
    measured_fit = max(
        (C - af * torch.cos(ang)).abs().max().item(), (S - direction * af * torch.sin(ang)).abs().max().item()
    )
    if layout is None:
        return result(
            **common,
            residual=max(measured_fit, structure_err),
            reason=f"the rotating dims {_dims_text(dims)} are paired as {pairs[:4]}..., which is "
            f"neither the half nor the interleaved layout over leading dims",
        )

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
                    c, s, angle = _predict_cs(
                        spec, pos, offset, direction, precision if precision != "float32" else "exact"
                    )
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
                        notes.append(
                            "matches only up to float32 angle rounding (neither ropekit's exact nor "
                            "transformers' float32 tables bit for bit)"
                        )
                    return result(
                        **common,
                        spec=spec,
                        base=spec.base,
                        scaling=family,
                        precision=precision,
                        residual=misfit,
                        notes=notes,
                    )
        return None

    found = fit(parametric)
    if found is None:
        # a plain/linear RoPE whose frequencies or angles were rounded to bf16/fp16 (an inv_freq
        # buffer that followed model.to(bfloat16), angles under autocast): name that, before a
        # per-pair longrope fit "explains" the rounded frequencies as a scaling
        low = _low_precision_fit(theta, theta_coarse, C, S, pos, offset, direction, r, D, layout, af, tol)
        if low is not None:
            spec, precision, misfit, note = low
            found = result(
                **common,
                spec=spec,
                base=spec.base,
                scaling="plain" if spec.scaling is None else spec.scaling.kind,
                precision=precision,
                residual=max(misfit, structure_err, block_err),
                notes=[note],
            )
    if found is None:
        found = fit(longrope)
    if found is not None:
        return found
    return result(
        **common,
        residual=max(measured_fit, structure_err),
        base=None,
        reason=f"no plain/linear/llama3/yarn/longrope spec reproduces the measured frequencies "
        f"(best per-pair fit misses by {measured_fit:.3g}); see inv_freq",
    )


def _dims_text(dims: list[int]) -> str:
    return f"{dims[:8]}{'...' if len(dims) > 8 else ''}"
