"""The zoo report of `ropekit doctor` (no argument): every convention of the zoo fingerprinted, its
verdict against transformers' Llama RoPE of the same head size, and the verified fix for each."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------


def zoo_report(max_position: int = 2**20, all_pairs: bool = False):
    """Fingerprints, verdicts against transformers' Llama RoPE, and fixes, for every zoo entry."""
    from ..doctor import zoo
    from ..doctor.comparison import compare
    from ..doctor.probe import fingerprint

    fps, refs, rows, fixes = {}, {}, [], []
    for name, e in zoo.ZOO.items():
        fps[name] = fingerprint(e.fn, e.head_dim, max_position=max_position)
        if e.head_dim not in refs:
            ref = zoo.REFERENCE(e.head_dim)
            refs[e.head_dim] = (ref, fingerprint(ref, e.head_dim, max_position=max_position))
        ref_fn, ref_fp = refs[e.head_dim]
        rep = compare(
            ref_fn,
            e.fn,
            e.head_dim,
            max_position=max_position,
            fingerprints=(ref_fp, fps[name]),
            names=("transformers", name),
        )
        rows.append((e, fps[name], rep))
    pairs = []
    if all_pairs:
        names = list(zoo.ZOO)
        pairs = [
            (x, y) for i, x in enumerate(names) for y in names[i + 1 :] if zoo.ZOO[x].head_dim == zoo.ZOO[y].head_dim
        ]
    else:
        pairs = [("minimind_rotate_half", "minimind_complex")]
    for x, y in pairs:
        ex, ey = zoo.ZOO[x], zoo.ZOO[y]
        rep = compare(ex.fn, ey.fn, ex.head_dim, max_position=max_position, fingerprints=(fps[x], fps[y]), names=(x, y))
        fixes.append((x, y, rep))
    return rows, fixes


def verdict(rep) -> str:
    if rep.equivalent:
        return "equivalent"
    if rep.precision_only:
        return "precision only"
    fields = [d.field for d in rep.differences]
    low = [d for d in rep.differences if d.field == "precision" and not d.text.startswith("precision:")]
    return (
        "differs: "
        + ", ".join(f for f in fields if f != "precision")
        + (("" if fields == ["precision"] else ", ") + "precision (bug)" if low else "")
    )


def scaling_cell(fp) -> str:
    if fp.spec is None or fp.spec.scaling is None:
        return "-" if fp.spec is not None else "?"
    s = fp.spec.scaling
    return f"{s.kind}({getattr(s, 'factor', '')})" if hasattr(s, "factor") else s.kind


def print_zoo(rows, fixes) -> None:
    header = (
        "name",
        "head",
        "layout",
        "rotary_dim",
        "base",
        "scaling",
        "offset",
        "precision",
        "verdict vs transformers Llama",
    )
    table = [header]
    for e, fp, rep in rows:
        table.append(
            (
                e.name,
                str(e.head_dim),
                fp.layout or "?",
                str(fp.rotary_dim),
                f"{fp.base:g}" if fp.base else "?",
                scaling_cell(fp),
                f"{fp.offset:+g}" if fp.offset else "0",
                fp.precision or "-",
                verdict(rep),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for k, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print("fixes (each verified by re-running the comparison with the fix applied):")
    for e, _fp, rep in rows:
        if not rep.equivalent:
            print_fix(f"transformers -> {e.name}", rep)
    for x, y, rep in fixes:
        if not rep.equivalent:
            print_fix(f"{x} -> {y}", rep)


def print_fix(title: str, rep) -> None:
    ok = {True: "verified", False: "NOT verified", None: "not verifiable"}[rep.fix_verified]
    if rep.fix_remaining:
        ok += f" ({rep.fix_remaining} remains)"
    print(f"* {title} [{ok}]: {rep.explanation}")
    for line in rep.fix.splitlines():
        print(f"    fix: {line}")
