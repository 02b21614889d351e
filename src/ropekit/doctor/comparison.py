"""comparison: are two rotary implementations the same, and if not, what exactly to change.

The verdict is numeric: both functions rotate the same random vectors (exactly representable in
both dtypes) at positions 0..31 and long ones up to ``max_position``; the error is reported as
max |a - b| and in ulps of the coarser dtype (scaled by the vector's magnitude), never as a mean of
signed differences, which cancels (``mean_signed_err`` is computed only to show that).

The explanation is structural: both functions are fingerprinted (``ropekit.doctor.probe``) and their
layouts, rotary_dims, bases, scalings, attention factors, offsets, directions and table precisions
are compared.  The fix names the concrete change, and is verified: B is composed with the change
(the q/k dim permutation for a layout, shifted positions for an offset, conjugation for a
direction, B's fingerprinted spec with A's values for config fields) and compared with A again.

>>> import ropekit as rk
>>> rep = rk.compare(rk.zoo.hf_rotate_half(64), rk.zoo.meta_complex(64), head_dim=64)
>>> rep.equivalent, rep.fix_verified
(False, True)
>>> "permute_qk" in rep.fix
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import RopeArgumentError
from ..kernels.reference import eps
from .arguments import check_dtype, check_head_dim, check_max_position, check_n_heads, check_seed, check_tolerance
from .calls import call_twice
from .explain import Difference, compose_fixes, is_low_precision, low_precision_fix, structural_differences
from .layerdiff import LayerDiff, diff_models
from .probe import Fingerprint, fingerprint, spec_rope_fn
from .structure import pair_dims

__all__ = ["compare", "Comparison", "diff_models", "LayerDiff", "COMPARE_POSITIONS", "pair_dims"]

RopeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: short positions (every one) and long ones (where float32 angles drift)
COMPARE_POSITIONS = tuple(range(32)) + (100, 1000, 4095, 4096, 8191, 32768, 131071, 2**20)
#: max error, in ulps of the coarser dtype times the vector's max |x|, that still counts as equal
DEFAULT_TOLERANCE_ULPS = 8.0


def _coarser(*dtypes: torch.dtype) -> torch.dtype:
    return max(dtypes, key=eps)


@dataclass
class Measurement:
    """Numbers from running two functions on the same vectors."""

    max_abs_err: float
    max_ulp_err: float
    mean_signed_err: float
    dtype: torch.dtype
    err_by_position: list[tuple[int, float]]
    tolerance_ulps: float

    @property
    def equivalent(self) -> bool:
        return self.max_ulp_err <= self.tolerance_ulps

    @property
    def worst_position(self) -> int:
        return max(self.err_by_position, key=lambda pe: pe[1])[0]


def _measure(
    fn_a, fn_b, head_dim, dtype_a, dtype_b, positions, tolerance_ulps, seed=0, rows=4, names=("A", "B")
) -> Measurement:
    gen = torch.Generator().manual_seed(seed)
    coarse_in = _coarser(dtype_a, dtype_b)
    pos = torch.tensor(positions, dtype=torch.int64).repeat_interleave(rows)
    x = torch.randn(pos.numel(), head_dim, generator=gen, dtype=torch.float64).to(coarse_in).double()
    # each function gets its own copy of every input (call_rope copies), twice: an in-place A must
    # not change what B sees, and a function that is not deterministic is named, not compared
    ya = call_twice(fn_a, x.to(dtype_a), pos, names[0])
    yb = call_twice(fn_b, x.to(dtype_b), pos, names[1])
    dtype = _coarser(coarse_in, ya.dtype, yb.dtype)
    diff = ya.detach().double().cpu() - yb.detach().double().cpu()
    err = diff.abs()
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    ulps = err / (scale * eps(dtype))
    per_pos = err.view(len(positions), rows, head_dim).amax((1, 2))
    return Measurement(
        max_abs_err=err.max().item(),
        max_ulp_err=ulps.max().item(),
        mean_signed_err=diff.mean().item(),
        dtype=dtype,
        err_by_position=list(zip(positions, per_pos.tolist())),
        tolerance_ulps=tolerance_ulps,
    )


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """What ``compare`` found.  ``equivalent`` is the numeric verdict; ``explanation`` and ``fix``
    are for people; ``fix_verified`` says whether B with the fix applied matched A."""

    head_dim: int
    equivalent: bool
    max_abs_err: float
    max_ulp_err: float
    mean_signed_err: float
    tolerance_ulps: float
    dtype: torch.dtype
    err_by_position: list[tuple[int, float]]
    fingerprint_a: Fingerprint | None
    fingerprint_b: Fingerprint | None
    differences: list[Difference] = field(default_factory=list)
    explanation: str = ""
    fix: str = ""
    fix_verified: bool | None = None
    fix_check: Measurement | None = None
    names: tuple[str, str] = ("A", "B")
    fix_remaining: str | None = None  # what still differs after the fix ("precision only")

    @property
    def precision_only(self) -> bool:
        """The two agree on every structural field; only table precision differs."""
        return (
            not self.equivalent
            and [d.field for d in self.differences] == ["precision"]
            and not any(is_low_precision(d.a) or is_low_precision(d.b) for d in self.differences)
        )

    @property
    def worst_position(self) -> int:
        return max(self.err_by_position, key=lambda pe: pe[1])[0]

    def report(self, show_mean: bool = False) -> str:
        """The multi-line text the CLI prints (``show_mean``: also the mean signed difference, and
        why it is not evidence).

        >>> import ropekit as rk
        >>> rep = rk.compare(rk.zoo.hf_rotate_half(16), rk.zoo.hf_rotate_half(16, 500000.0), 16)
        >>> print(rep.report().splitlines()[-3])
        why: base (rope_theta): A 10000, B 500000
        """
        a, b = self.names
        dt = str(self.dtype).replace("torch.", "")
        lines = []
        for name, fp in ((a, self.fingerprint_a), (b, self.fingerprint_b)):
            if fp is not None:
                lines.append(f"{name}: {fp.summary()}")
        lines.append(
            f"max |{a} - {b}| = {self.max_abs_err:.3g} ({self.max_ulp_err:.3g} ulps of {dt}; tolerance "
            f"{self.tolerance_ulps:g}) over positions 0..{self.err_by_position[-1][0]}, worst at "
            f"p={self.worst_position}"
        )
        if show_mean:
            lines.append(
                f"mean signed difference = {self.mean_signed_err:.3g}: NOT evidence of equivalence "
                f"(signed errors cancel; the verdict uses the max above)"
            )
        verdict = "equivalent" if self.equivalent else ("precision only" if self.precision_only else "NOT equivalent")
        lines.append(f"verdict: {verdict}")
        if self.explanation and not self.equivalent:
            lines.append("why: " + self.explanation)
        if self.fix:
            lines.append("fix: " + self.fix.replace("\n", "\n     "))
        if self.fix_check is not None:
            c = self.fix_check
            state = "equivalent" if c.equivalent else (self.fix_remaining or "still differs")
            lines.append(
                f"fix verified: {'yes' if self.fix_verified else 'no'} (after the fix max |{a} - {b}'| = "
                f"{c.max_abs_err:.3g}, {c.max_ulp_err:.3g} ulps: {state})"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()

    def to_dict(self) -> dict:
        return {
            "equivalent": self.equivalent,
            "precision_only": self.precision_only,
            "max_abs_err": self.max_abs_err,
            "max_ulp_err": self.max_ulp_err,
            "mean_signed_err": self.mean_signed_err,
            "mean_signed_err_note": "not evidence: signed errors cancel; use max_abs_err / max_ulp_err",
            "tolerance_ulps": self.tolerance_ulps,
            "dtype": str(self.dtype).replace("torch.", ""),
            "worst_position": self.worst_position,
            "err_by_position": [[p, e] for p, e in self.err_by_position],
            "differences": [
                {"field": d.field, "a": _jsonable(d.a), "b": _jsonable(d.b), "text": d.text} for d in self.differences
            ],
            "explanation": self.explanation,
            "fix": self.fix,
            "fix_verified": self.fix_verified,
            "fix_check": None
            if self.fix_check is None
            else {
                "max_abs_err": self.fix_check.max_abs_err,
                "max_ulp_err": self.fix_check.max_ulp_err,
                "equivalent": self.fix_check.equivalent,
            },
            "a": None if self.fingerprint_a is None else self.fingerprint_a.to_dict(),
            "b": None if self.fingerprint_b is None else self.fingerprint_b.to_dict(),
        }


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dict):
        return v
    return str(v)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


def compare(
    fn_a: RopeFn,
    fn_b: RopeFn,
    head_dim: int,
    *,
    dtype: torch.dtype = torch.float32,
    dtype_b: torch.dtype | None = None,
    max_position: int = 2**20,
    n_heads: int | None = None,
    tolerance_ulps: float = DEFAULT_TOLERANCE_ULPS,
    names: tuple[str, str] = ("A", "B"),
    fingerprints: tuple[Fingerprint | None, Fingerprint | None] | None = None,
    seed: int = 0,
) -> Comparison:
    """Compare two black-box rotary functions ``fn(x[n, head_dim], positions[n])``.

    ``dtype`` (and ``dtype_b`` for B, default the same) is the dtype each function receives.
    ``n_heads`` only fills the ``permute_qk`` call in a layout fix.  Returns a :class:`Comparison`.

    >>> import ropekit as rk
    >>> rep = rk.compare(rk.zoo.hf_rotate_half(64), rk.zoo.offset_by_one(64), head_dim=64)
    >>> rep.equivalent, [d.field for d in rep.differences], rep.fix_verified
    (False, ['offset'], True)
    """
    check_head_dim(head_dim)
    check_dtype(dtype)
    dtype_b = dtype if dtype_b is None else check_dtype(dtype_b, "dtype_b")
    check_max_position(max_position, 1)
    check_n_heads(n_heads)
    tolerance_ulps = check_tolerance(tolerance_ulps)
    check_seed(seed)
    if not (isinstance(names, tuple) and len(names) == 2 and all(isinstance(n, str) for n in names)):
        raise RopeArgumentError(f"names={names!r} must be a tuple of two strings")
    positions = tuple(p for p in COMPARE_POSITIONS if p <= max_position)
    m = _measure(fn_a, fn_b, head_dim, dtype, dtype_b, positions, tolerance_ulps, seed, names=names)
    fa, fb = fingerprints if fingerprints is not None else (None, None)
    rep = Comparison(
        head_dim=head_dim,
        equivalent=m.equivalent,
        max_abs_err=m.max_abs_err,
        max_ulp_err=m.max_ulp_err,
        mean_signed_err=m.mean_signed_err,
        tolerance_ulps=tolerance_ulps,
        dtype=m.dtype,
        err_by_position=m.err_by_position,
        fingerprint_a=fa,
        fingerprint_b=fb,
        names=names,
    )
    if rep.equivalent:
        rep.explanation = (
            f"equivalent: max |A - B| = {m.max_abs_err:.3g} ({m.max_ulp_err:.3g} ulps) "
            f"at every probed position up to {positions[-1]}"
        )
        return rep
    fp_max = max_position if max_position >= 16 else 16
    if fa is None:
        fa = fingerprint(fn_a, head_dim, dtype=dtype, max_position=fp_max)
    if fb is None:
        fb = fingerprint(fn_b, head_dim, dtype=dtype_b, max_position=fp_max)
    rep.fingerprint_a, rep.fingerprint_b = fa, fb
    _explain(rep, fn_a, fn_b, fa, fb, head_dim, dtype, dtype_b, positions, tolerance_ulps, n_heads, seed)
    return rep


def _explain(rep, fn_a, fn_b, fa, fb, D, dtype_a, dtype_b, positions, tol_ulps, n_heads, seed):
    a, b = rep.names
    diffs: list[Difference] = []
    if fa.spec is None or fb.spec is None:
        for name, fp in ((a, fa), (b, fb)):
            if fp.spec is None:
                diffs.append(
                    Difference("rope", None, None, f"{name} is not a RoPE this tool can describe: {fp.reason}")
                )
        rep.differences = diffs
        rep.explanation = "; ".join(d.text for d in diffs)
        rep.fix = "no fix can be derived: the function(s) above do not apply a RoPE"
        return
    sa = fa.spec
    diffs, config, fixes, rounding = structural_differences(rep, fa, fb, D, n_heads)
    rep.differences = diffs
    if not diffs:
        rep.explanation = (
            f"both fingerprint as {sa.describe()} with the same precision ({fa.precision}); "
            f"the difference (max {rep.max_abs_err:.3g}, worst at p={rep.worst_position}) is "
            f"rounding inside the rotation itself"
        )
        rep.fix = "compute the rotation in float32 or wider (ropekit.apply_rope does) and cast once at the end"
        return
    rep.explanation = "; ".join(d.text for d in diffs)
    low = [(n, fp.precision) for n, fp in ((a, fa), (b, fb)) if is_low_precision(fp.precision)]
    if low:
        fixes.append("; ".join(low_precision_fix(n, prec) for n, prec in low))
    if [d.field for d in diffs] == ["precision"] and low:
        rep.fix = fixes[-1]
        # verified: the intended spec with float32 tables must be A
        fixed = spec_rope_fn(
            fb.spec,
            offset=fb.offset,
            direction=fb.direction,
            precision=fa.precision if fa.precision in ("exact", "hf") else "hf",
        )
        rep.fix_check = _measure(fn_a, fixed, D, dtype_a, dtype_b, positions, tol_ulps, seed)
        rep.fix_verified = rep.fix_check.equivalent if not is_low_precision(fa.precision) else None
        return
    if [d.field for d in diffs] == ["precision"]:
        rep.fix = (
            "precision only: build both tables the same way: float64 angles "
            "(ropekit.cos_sin(spec, positions, precision='exact')), or precision='hf' in both to "
            "reproduce transformers bit for bit"
        )
        return
    if "precision" in [d.field for d in diffs]:
        fixes.append("(tables also differ in precision: see above; that part is not a config change)")
    rep.fix = "\n".join(fixes)
    if rounding and fa.rounded_inside:
        rep.fix = "\n".join(fixes)
        rep.fix_verified = None  # the fix is to A's code; B is the reference here
        return
    fixed = compose_fixes(fn_b, fa, fb, config, D, rebuild=rounding)
    if fixed is None:
        rep.fix_verified = None
        return
    fixed_fn, min_pos = fixed
    check_pos = tuple(p for p in positions if p >= min_pos)
    check = _measure(fn_a, fixed_fn, D, dtype_a, dtype_b, check_pos, tol_ulps, seed)
    rep.fix_check = check
    rep.fix_verified = check.equivalent
    if not check.equivalent and fa.precision != fb.precision:
        # what remains may be the tables' precision: B with the fix must then fingerprint as A does
        fixed_fp = fingerprint(fixed_fn, D, dtype=dtype_b, max_position=max(16, positions[-1]))
        same = fixed_fp.spec == fa.spec and fixed_fp.offset == fa.offset and fixed_fp.direction == fa.direction
        rep.fix_verified = same
        if same:
            rep.fix_remaining = "precision only"
