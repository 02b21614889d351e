"""explain: what differs between two fingerprinted rotations, the fix for each difference, and
B with those fixes composed (so ``compare`` can verify them).

>>> possessive("transformers"), possessive("B")
("transformers'", "B's")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..frequencies import attention_factor as spec_attention_factor
from ..frequencies import inv_freq
from ..spec import scaling_to_dict
from .probe import Fingerprint
from .structure import pair_dims
from .verification import spec_rope_fn

__all__ = [
    "Difference",
    "structural_differences",
    "same_frequencies",
    "compose_fixes",
    "possessive",
    "is_low_precision",
    "low_precision_fix",
    "precision_text",
]


@dataclass
class Difference:
    field: str  # layout | rotary_dim | base | scaling | attention_factor | offset | direction | precision | rope
    a: object
    b: object
    text: str


def same_frequencies(a, b, rel: float = 1e-6) -> bool:
    """Same rotating dims, layout and direction, and inverse frequencies and attention factor equal
    to ``rel`` (relative): one RoPE, however differently two sides spell or fit it."""
    if (a.head_dim, a.rotary_dim, a.layout, a.angle_sign) != (b.head_dim, b.rotary_dim, b.layout, b.angle_sign):
        return False
    (fa, aa), (fb, ab) = inv_freq(a), inv_freq(b)
    return bool(((fa - fb).abs() <= rel * fb.abs()).all()) and abs(aa - ab) <= rel * abs(ab)


def config_differences(rep, sa, sb, D: int):
    """(differences, config changes for B, fix lines) in the fields a config sets: rotary_dim, base,
    scaling, attention factor."""
    a, b = rep.names
    diffs: list[Difference] = []
    config: dict = {}
    fixes: list[str] = []
    if sa.rotary_dim != sb.rotary_dim:
        text = f"rotary_dim: {a} rotates {sa.rotary_dim} of {D} dims, {b} rotates {sb.rotary_dim}"
        k = math.log2(sa.rotary_dim / sb.rotary_dim) if sb.rotary_dim else 0
        if k >= 1 and k.is_integer():
            text += (
                f" ({2 ** int(k)}x fewer; if not intended, check that partial_rotary_factor is applied "
                f"once, to head_dim)"
            )
        diffs.append(Difference("rotary_dim", sa.rotary_dim, sb.rotary_dim, text))
        config["rotary_dim"] = sa.rotary_dim
        fixes.append(
            f"set {possessive(b)} rotary_dim to {sa.rotary_dim} (partial_rotary_factor={sa.rotary_dim / D:g} of "
            f"head_dim {D}, applied once to head_dim: RopeSpec.with_rotary_fraction({sa.rotary_dim / D:g}))"
        )
    if sa.base != sb.base:
        diffs.append(Difference("base", sa.base, sb.base, f"base (rope_theta): {a} {sa.base:g}, {b} {sb.base:g}"))
        config["base"] = sa.base
        fixes.append(f"set {possessive(b)} rope_theta to {sa.base:g} (it is {sb.base:g})")
    # two fits of one RoPE can land on scalings that differ in the 8th digit (LitGPT's float32
    # yarn against ropekit's): that is no config change to propose
    if sa.scaling != sb.scaling and not same_frequencies(sa, sb):
        da, db = scaling_to_dict(sa.scaling), scaling_to_dict(sb.scaling)
        diffs.append(Difference("scaling", da, db, f"scaling: {a} {scaling_text(sa)}, {b} {scaling_text(sb)}"))
        config["scaling"] = sa.scaling
        fixes.append(
            f"set {possessive(b)} rope_scaling to {hf_scaling(da)}"
            if da is not None
            else f"remove {possessive(b)} rope_scaling"
        )
    fa_af, fb_af = (
        spec_attention_factor(sa),
        spec_attention_factor(sb.replace(**config)) if config else spec_attention_factor(sb),
    )
    if abs(fa_af - fb_af) > 1e-6 * max(1.0, fa_af):
        diffs.append(
            Difference("attention_factor", fa_af, fb_af, f"attention factor: {a} {fa_af:.6g}, {b} {fb_af:.6g}")
        )
        config["attention_factor"] = fa_af
        fixes.append(f"set {possessive(b)} attention_factor to {fa_af:.6g}")
    return diffs, config, fixes


def structural_differences(rep, fa: Fingerprint, fb: Fingerprint, D: int, n_heads):
    """(differences, config changes for B, fix lines, whether output precision differs)."""
    a, b = rep.names
    sa, sb = fa.spec, fb.spec
    diffs, config, fixes = config_differences(rep, sa, sb, D)
    if sa.layout != sb.layout:
        diffs.append(
            Difference(
                "layout",
                sa.layout,
                sb.layout,
                f"layout: {a} {sa.layout} (pairs {pairs_text(sa.layout)}), "
                f"{b} {sb.layout} (pairs {pairs_text(sb.layout)})",
            )
        )
        heads = n_heads if n_heads is not None else "<n_heads>"
        fixes.append(
            f"to run weights made for {b} under {possessive(a)} rotation, permute their q/k projection rows: "
            f"w = ropekit.permute_qk(w, n_heads={heads}, head_dim={D}, rotary_dim={sa.rotary_dim}, "
            f"src='{sb.layout}', dst='{sa.layout}') for q_proj and k_proj (n_heads = KV heads for k_proj; "
            f"src/dst swapped for the other direction); or set layout='{sa.layout}' in {b}"
        )
    if fa.offset != fb.offset:
        shift = fb.offset - fa.offset
        diffs.append(
            Difference(
                "offset", fa.offset, fb.offset, f"offset: {b} rotates position p as p {shift:+g} relative to {a}"
            )
        )
        fixes.append(
            f"{b} is {abs(shift):g} position(s) {'ahead' if shift > 0 else 'behind'}: pass {b} positions "
            f"{'-' if shift > 0 else '+'} {abs(shift):g} (check position_ids / cache offsets)"
        )
    if fa.direction != fb.direction:
        diffs.append(Difference("direction", fa.direction, fb.direction, f"direction: {b} rotates the other way"))
        fixes.append(f"{b} rotates backwards: negate its sin table (or swap the two dims of each pair)")
    rounding = fa.output_precision != fb.output_precision
    if rounding:
        diffs.append(
            Difference(
                "output_precision",
                fa.output_precision,
                fb.output_precision,
                f"output precision: {a} {rounding_text(fa)}, {b} {rounding_text(fb)}",
            )
        )
        coarse = a if fa.rounded_inside else b
        fixes.append(
            f"compute {possessive(coarse)} rotation in float32 or wider (no .to(bfloat16/float16) or autocast inside "
            f"it) and cast once at the end"
        )
    if fa.precision != fb.precision and not (fa.rounded_inside or fb.rounded_inside):
        alone = not diffs
        diffs.append(Difference("precision", fa.precision, fb.precision, precision_text(rep, fa, fb, alone)))
    elif not diffs and sa != sb:  # then config_differences found them the same RoPE
        diffs.append(
            Difference(
                "precision",
                fa.precision,
                fb.precision,
                f"precision: {a} and {b} fit the same RoPE (frequencies and attention factor equal to 1e-6), but "
                f"their tables differ by up to {rep.max_abs_err:.2g}: the arithmetic that builds them, not the RoPE",
            )
        )
    return diffs, config, fixes, rounding


def compose_fixes(fn_b, fa: Fingerprint, fb: Fingerprint, config: dict, D: int, rebuild: bool = False):
    """B with every fix applied, as a black box (None when a fix cannot be composed); ``rebuild``:
    B rebuilt from its fingerprint in float32 even without a config change (B rounds inside)."""
    fn = fn_b
    layout_b, r_b = fb.spec.layout, fb.spec.rotary_dim
    if config or rebuild:
        # config fields: B's own fingerprinted rotation (offset, direction, precision kept) with A's values
        spec = fb.spec.replace(**config)
        precision = fb.precision if fb.precision in ("exact", "hf") else "hf"
        fn = spec_rope_fn(spec, offset=fb.offset, direction=fb.direction, precision=precision)
        r_b = spec.rotary_dim
    pairs_b = pair_dims(layout_b, r_b)
    min_pos = 0
    if fa.direction != fb.direction:
        seconds = torch.tensor([q for _, q in pairs_b])
        fn = conjugated(fn, seconds)
    if fa.offset != fb.offset:
        shift = fb.offset - fa.offset
        if not float(shift).is_integer():
            return None
        shift = int(shift)
        min_pos = max(0, shift)
        fn = shifted(fn, shift)
    if fa.spec.layout != layout_b:
        perm = list(range(D))
        for (a1, a2), (b1, b2) in zip(pair_dims(fa.spec.layout, r_b), pairs_b):
            perm[b1], perm[b2] = a1, a2
        fn = permuted(fn, torch.tensor(perm))
    return fn, min_pos


def conjugated(fn, seconds):
    def g(x, p):
        x = x.clone()
        x[:, seconds] = -x[:, seconds]  # J R(theta) J = R(-theta); negation is exact in every dtype
        y = fn(x, p).clone()
        y[:, seconds] = -y[:, seconds]
        return y

    return g


def shifted(fn, shift):
    return lambda x, p: fn(x, p - shift)


def permuted(fn, perm):
    inv = torch.argsort(perm)
    return lambda x, p: fn(x[:, perm], p)[:, inv]


def rounding_text(fp: Fingerprint) -> str:
    dtype = str(fp.dtype).replace("torch.", "")
    if fp.rounded_inside:
        return f"rounds its outputs to {fp.output_precision} inside a {dtype} interface ({fp.significand_bits} bits)"
    return f"carries {fp.output_precision}"


def possessive(name: str) -> str:
    """English possessive ("transformers'", "B's")."""
    return name + ("'" if name.endswith("s") else "'s")


def hf_scaling(d: dict) -> dict:
    """A scaling dict in transformers' config spelling (``rope_type`` first)."""
    d = dict(d)
    return {"rope_type": d.pop("kind", None), **d}


def scaling_text(spec) -> str:
    if spec.scaling is None:
        return "none"
    return spec.describe().split(" ", 3)[3] if len(spec.describe().split(" ")) > 3 else spec.scaling.kind


def pairs_text(layout: str) -> str:
    return "(i, i + r/2)" if layout == "half" else "(2i, 2i+1)"


def is_low_precision(precision) -> bool:
    """A table precision below float32 ("inv_freq:bfloat16", "angles:float16", ...)."""
    return isinstance(precision, str) and precision.startswith(("inv_freq:", "angles:"))


def low_precision_fix(name: str, precision: str) -> str:
    mode, dtype = precision.split(":")
    if mode == "inv_freq":
        return (
            f"keep {possessive(name)} inv_freq in float32: it was rounded to {dtype} (a frequency buffer must not "
            f"follow model.to({dtype}): register it with persistent=False and recompute it in float32, "
            f"as ropekit.RotaryEmbedding does)"
        )
    return (
        f"compute {possessive(name)} angles (position * inv_freq) and cos/sin in float32 or wider, not {dtype} "
        f"(disable autocast around the rotary embedding); cast only cos/sin to the activation dtype"
    )


def precision_text(rep, fa: Fingerprint, fb: Fingerprint, alone: bool) -> str:
    text = f"precision: {rep.names[0]} matches {fa.precision} tables, {rep.names[1]} {fb.precision} tables"
    low = [(n, fp.precision) for n, fp in zip(rep.names, (fa, fb)) if is_low_precision(fp.precision)]
    if low:
        return "; ".join(
            f"{n}: {'inv_freq' if p.startswith('inv_freq') else 'angles'} rounded to {p.split(':')[1]}" for n, p in low
        ) + (
            f" (outputs off by {rep.err_by_position[-1][1]:.2g} at p={rep.err_by_position[-1][0]}; not a convention "
            f"difference: a precision bug)"
        )
    if not alone:
        return text + " (a difference that grows with position)"
    short = max((e for p, e in rep.err_by_position if p < 32), default=0.0)
    long_p, long_e = rep.err_by_position[-1]
    return text + (
        f" (max error {short:.2g} at positions < 32, {long_e:.2g} at p={long_p}: float32 angles drift with position)"
    )
