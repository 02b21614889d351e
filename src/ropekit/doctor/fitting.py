"""fitting: which parametric RoPE spec explains measured frequencies (used by ``ropekit.doctor.probe``).

``candidates`` turns the inverse frequencies a probe measured into candidate specs, simplest family
first (plain, linear, llama3, yarn; longrope-like per-pair divisors last, since they explain any
frequency set).  Nothing here is trusted: ``fingerprint`` rebuilds each candidate with ropekit's own
tables and keeps it only if it reproduces every probed value.  ``low_precision_fit`` recognises the
two precision bugs (frequencies or angles rounded to bf16/fp16) before a longrope-like fit could
"explain" them as a scaling.

>>> import torch
>>> theta = 10000.0 ** -(torch.arange(0, 8, 2, dtype=torch.float64) / 8)
>>> spec, family, notes = next(candidates(theta, 8, 8, "half", 1.0, 2**20, 2.0**-23))
>>> family, spec.base
('plain', 10000.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import RopeError
from ..frequencies import attention_factor as spec_attention_factor
from ..frequencies import inv_freq as spec_inv_freq
from ..frequencies import yarn_bounds
from ..spec import Linear, Llama3, LongRope, RopeSpec, Yarn

__all__ = ["candidates", "low_precision_fit", "ntk_alpha_notes", "nice", "F32_EPS"]

F32_EPS = 2.0**-24  # unit roundoff of float32
_F32_EPS = F32_EPS


def nice(value: float, max_digits: int = 9, rel_tol: float = 1e-3) -> list[float]:
    """Short decimal candidates for a fitted number, shortest first, the raw value last."""
    out: list[float] = []
    for k in range(1, max_digits + 1):
        c = float(f"{value:.{k}g}")
        if c not in out and abs(c - value) <= rel_tol * abs(value):
            out.append(c)
    if value not in out:
        out.append(value)
    return out


#: bases that NTK-by-alpha models start from
_NTK_START_BASES = (10000.0, 500000.0, 1000000.0)


def ntk_alpha_notes(base: float, r: int, sigma_rel: float) -> list[str]:
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
                out.append(
                    f"base {base:.10g} = NTK-by-alpha of base {b0:g} with alpha={a:g} "
                    f"({b0:g} * {a:g} ** ({r} / {r - 2})); the two are the same rotation"
                )
                break
    return out[:1]


#: dtypes whose rounding of frequencies / angles the fingerprint recognises
_LOW_DTYPES = (torch.bfloat16, torch.float16)


def low_precision_fit(theta, theta_coarse, C, S, pos, offset, direction, r, D, layout, af, tol):
    """(spec, precision, misfit, note) when a plain or linear spec explains fn once its inv_freq is
    rounded to bf16/fp16 (angles then in float32: precision ``"inv_freq:bfloat16"``), or once
    ``position * inv_freq`` itself runs in bf16/fp16 (``"angles:bfloat16"``); else None."""
    n = theta.numel()
    if n < 2:
        return None
    x = torch.arange(n, dtype=torch.float64) * 2 / r
    af_spec = None if abs(af - 1.0) <= 2 * tol else float(nice(af, rel_tol=4 * tol)[0])
    tried = set()
    for th in (theta, theta_coarse):
        usable = th > 0
        if usable.sum() < 2:
            continue
        # rounded frequencies are off by <= 2**-8 relative: a least-squares line through all pairs
        A = torch.stack((torch.ones_like(x), x), 1)[usable]
        sol = torch.linalg.lstsq(A, -torch.log(th[usable])[:, None]).solution.flatten()
        factor, base = math.exp(sol[0].item()), math.exp(sol[1].item())
        factors = [1.0] + ([f for f in nice(factor, rel_tol=2e-2)[:3] if f > 1] if factor > 1.01 else [])
        for bc in nice(base, rel_tol=2e-2)[:4]:
            for fc in factors:
                if (bc, fc) in tried:
                    continue
                tried.add((bc, fc))
                try:
                    spec = RopeSpec(
                        head_dim=D,
                        rotary_dim=r,
                        base=bc,
                        layout=layout,
                        scaling=Linear(factor=fc) if fc > 1 else None,
                        attention_factor=af_spec,
                    )
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
                            exact = (pos.to(torch.float64) + offset)[:, None] * spec_inv_freq(spec)[0][None]
                            worst = (ang.double() - exact).abs().max().item()
                            what = (
                                f"inv_freq is rounded to {name} (e.g. a frequency buffer that followed "
                                f"model.to({name}))"
                                if mode == "inv_freq"
                                else f"the angles position * inv_freq are computed in {name} (e.g. under autocast)"
                            )
                            return (
                                spec,
                                f"{mode}:{name}",
                                err,
                                (
                                    f"{what}: angles off by up to {worst:.3g} rad at p={int(pos.max())}; the spec "
                                    f"is what it was meant to be"
                                ),
                            )
    return None


# ---------------------------------------------------------------------------------------------
# candidate specs from measured frequencies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fit:
    """What every stage of ``candidates`` reads: the measured frequencies and their precision."""

    theta: torch.Tensor  # measured inverse frequencies, one per pair
    x: torch.Tensor  # exponents 2i / r
    ell: torch.Tensor  # -log theta
    sigma: float  # absolute precision of each theta: angle noise over the longest probed position
    usable: torch.Tensor  # pairs measured well above their noise
    af: float  # measured attention factor
    af_cands: list  # attention factors to try (None: the spec's own)
    af_spec: float | None
    eps: float
    r: int


def _measurements(theta, r, af, last_p, eps) -> _Fit:
    n = theta.numel()
    x = torch.arange(n, dtype=torch.float64) * 2 / r
    sigma = (4 * eps + 1e-12) / last_p
    af_spec = None if abs(af - 1.0) <= 2 * eps else af
    af_cands = [None] if af_spec is None else [float(c) for c in nice(af)]
    ell = -torch.log(theta.clamp_min(1e-300))
    return _Fit(theta, x, ell, sigma, theta > 8 * sigma, af, af_cands, af_spec, eps, r)


def _spec_maker(head_dim: int, r: int, layout: str):
    """spec(base, scaling, attention) -> RopeSpec, or None where the fields are not a valid spec."""

    def spec(base, scaling=None, attention=None):
        try:
            return RopeSpec(
                head_dim=head_dim, rotary_dim=r, base=base, layout=layout, scaling=scaling, attention_factor=attention
            )
        except RopeError:
            return None

    return spec


def _plain_and_linear(spec, f: _Fit) -> list:
    """plain (theta_0 = 1, log theta linear in x through the origin) and linear (theta = base^-x / factor)."""
    theta, x, ell, usable = f.theta, f.x, f.ell, f.usable
    w = (theta / f.sigma).clamp_max(1e12) * usable
    out = []
    if usable[1:].any() and abs(theta[0].item() - 1) <= 16 * f.sigma:
        base_plain = math.exp(((w[1:] * x[1:] * ell[1:]).sum() / (w[1:] * x[1:] ** 2).sum()).item())
        out += [(spec(bc, None, ac), "plain") for bc in nice(base_plain) for ac in f.af_cands]
    if usable.sum() >= 2 and theta[0].item() < 1 - 16 * f.sigma:
        A = torch.stack((torch.ones_like(x), x), 1)[usable]
        sol = torch.linalg.lstsq(A * w[usable, None], (ell * w)[usable, None]).solution.flatten()
        factor, base_lin = math.exp(sol[0].item()), math.exp(sol[1].item())
        for bc in nice(base_lin)[:6]:
            for fc in nice(factor)[:6]:
                out += [(spec(bc, Linear(factor=fc) if fc >= 1 else None, ac), "linear") for ac in f.af_cands]
    return [(s, family, []) for s, family in out if s is not None]


def _prefix_bases(f: _Fit, base_prefix: float, prefix: int) -> list[float]:
    """Bases that reproduce the unscaled leading pairs to their precision, shortest first."""
    theta, x = f.theta[:prefix], f.x[:prefix]
    bases = [
        bc
        for bc in nice(base_prefix)
        if ((torch.pow(bc, -x) - theta).abs() <= 16 * f.sigma + 4 * _F32_EPS * theta).all()
    ]
    return bases or [base_prefix]


def _scaled(spec, f: _Fit, base: float):
    """llama3 and yarn candidates over ``base``: the factor from the fully scaled pairs (or, for a yarn
    ramp that ends before any pair is fully scaled, from yarn's default attention factor)."""
    inv0 = torch.pow(base, -f.x)
    rho = f.theta / inv0
    fac = _tail_factor(rho, f.theta, f.sigma)
    factors = nice(fac)[:6] if fac > 1 + 1e-6 else []
    yarn_only = []
    if f.af > 1 + 2 * f.eps:
        # af is measured to ~eps, so f = exp(10 (af - 1)) only to ~10 eps relative
        implied = nice(math.exp((f.af - 1) / 0.1), rel_tol=max(1e-3, 20 * f.eps * f.af))
        yarn_only = [c for c in implied[:6] if c > 1 and c not in factors]
    for fc in factors + yarn_only:
        g = (rho - 1.0 / fc) / (1 - 1.0 / fc)
        # a pair is inside the blend band only if it is there beyond its own measurement noise
        noise = (8 * f.sigma / f.theta.clamp_min(1e-300)) * rho / (1 - 1.0 / fc)
        band = (g > noise.clamp_min(1e-4)) & (g < 1 - noise.clamp_min(1e-4)) & f.usable
        if fc in factors:
            yield from _llama3_candidates(spec, base, fc, g, band, inv0, f.af_cands)
        yield from _yarn_candidates(spec, base, fc, g, band, f.r, f.af, f.af_cands, 2 * f.eps * max(1.0, f.af))


def candidates(theta: torch.Tensor, r: int, head_dim: int, layout: str, af: float, last_p: float, eps: float):
    """Yield (spec, family, notes), simplest first."""
    if theta.numel() == 1:
        return
    f = _measurements(theta, r, af, last_p, eps)
    spec = _spec_maker(head_dim, r, layout)
    yield from _plain_and_linear(spec, f)
    # prefix fit (pairs that keep their frequency: llama3 / yarn high-frequency band)
    base_prefix, prefix = _prefix_base(theta, f.x, f.ell, f.sigma)
    if base_prefix is None:
        # no unscaled leading pairs (LitGPT's mirrored yarn divides pair 0): per-pair divisors over
        # the base the slowest pairs follow, when they keep their frequency
        n = theta.numel()
        if n >= 3 and theta[-1].item() > 8 * f.sigma and theta[-2].item() > 8 * f.sigma:
            suffix = math.exp(((f.ell[-1] - f.ell[-2]) / (f.x[-1] - f.x[-2])).item())
            yield from _longrope_like(spec, nice(suffix)[0], f.x, theta, f.af_spec)
        return
    bases = _prefix_bases(f, base_prefix, prefix)
    for bc in bases[:3]:
        yield from _scaled(spec, f, bc)
    # longrope-like, last: one divisor per pair explains any frequency set, so it must not shadow
    # a family with fewer parameters
    yield from _longrope_like(spec, bases[0], f.x, theta, f.af_spec)


def _with_attention(spec, base, scaling, af_cands, family: str, note: str):
    """(spec, family, [note]) for each attention factor that makes a valid spec."""
    for ac in af_cands:
        s = spec(base, scaling, ac)
        if s is not None:
            yield s, family, [note]


def _longrope_like(spec, base, x, theta, af_spec):
    ext = tuple(float(v) for v in (torch.pow(base, -x) / theta.clamp_min(1e-300)).tolist())
    if all(e > 0 and math.isfinite(e) for e in ext):
        lr = LongRope(short_factor=ext, long_factor=ext, original_max_position_embeddings=2**31 - 1)
        s = spec(base, lr, af_spec)
        if s is not None:
            yield (
                s,
                "longrope-like",
                [
                    "per-pair divisors fitted; short and long factors cannot be told "
                    "apart from one call, so both hold the fitted ones"
                ],
            )


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
        for lc in nice(lff)[:4]:
            for hc in nice(hff)[:4]:
                try:
                    sc = Llama3(
                        factor=factor, low_freq_factor=lc, high_freq_factor=hc, original_max_position_embeddings=orig
                    )
                except RopeError:
                    continue
                note = (
                    "llama3's original_max_position_embeddings, low_freq_factor and high_freq_factor "
                    f"are identifiable only as ratios; chose original_max_position_embeddings={orig}"
                )
                yield from _with_attention(spec, base, sc, af_cands, "llama3", note)


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
            lo, hi = yarn_bounds(sc, r, base)
            if abs(lo - low) > 0.02 or abs(hi - high) > 0.02:
                continue
            implied = spec_attention_factor(RopeSpec(head_dim=r, base=base, scaling=sc))
            attn = [None] if abs(implied - af) <= af_tol else af_cands
            note = (
                "yarn's beta_fast/beta_slow/original_max_position_embeddings are identifiable only through "
                f"the ramp bounds; chose beta 32/1 and original_max_position_embeddings={orig}"
            )
            yield from _with_attention(spec, base, sc, attn, "yarn", note)
