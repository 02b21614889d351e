"""`ropekit doctor [A [B]]`: which RoPE is this, are these two the same, and what to change.

* no argument: fingerprint every convention of the zoo, one table, verdicts against transformers'
  Llama RoPE of the same head size, and the fix for each difference (verified);
* ``A``: fingerprint one implementation;
* ``A B``: compare two; exit 0 when equivalent, 1 when not (with the explanation and the fix).

A and B are ``package.module:function`` (a ``fn(x[n, head_dim], positions[n])``; give
``--head-dim`` unless the function has a ``head_dim`` attribute), ``zoo:NAME``, or a config path
or model directory (read by ``ropekit.from_config``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from ..errors import RopeError

EXAMPLE = """examples:
  ropekit doctor                                   # the zoo: one table + the fixes
  ropekit doctor zoo:hf_rotate_half zoo:meta_complex
  ropekit doctor mypkg.rope:apply_rope zoo:hf_rotate_half --head-dim 128 --dtype bfloat16
  ropekit doctor path/to/llama/config.json mypkg.rope:apply_rope --json

exit codes: 0 equivalent (or the zoo report), 1 not equivalent (or no RoPE found), 2 bad input"""

#: --dtype choices (torch dtype names): torch is imported when the command runs, not when
#: `ropekit` builds its parser (`ropekit convert` between safetensors files never needs it)
DTYPES = ("float32", "bfloat16", "float16", "float64")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="fingerprint RoPE implementations, compare two, explain and fix the difference",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=EXAMPLE,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("a", nargs="?", help="package.module:function, zoo:NAME, or a config path / model dir")
    p.add_argument("b", nargs="?", help="the second implementation (same forms as A)")
    p.add_argument("--head-dim", type=int, default=None, help="head size, for functions that do not carry one")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype the functions receive")
    p.add_argument("--dtype-b", choices=sorted(DTYPES), default=None, help="dtype for B (default: --dtype)")
    p.add_argument("--max-position", type=int, default=2**20, help="longest position probed (default 2**20)")
    p.add_argument("--n-heads", type=int, default=None, help="fills n_heads in a permute_qk fix")
    p.add_argument(
        "--precision",
        choices=("exact", "hf"),
        default="hf",
        help="tables for config inputs: 'hf' = transformers' float32 arithmetic (default), 'exact'",
    )
    p.add_argument(
        "--show-mean", action="store_true", help="also print the mean signed difference (and why it is not evidence)"
    )
    p.add_argument("--all-pairs", action="store_true", help="zoo: fixes for every pair of equal head size")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# resolving A and B
# ---------------------------------------------------------------------------------------------


def resolve(arg: str, head_dim: int | None, precision: str):
    """(name, fn, head_dim) for one command-line operand."""
    from ..doctor import zoo

    if arg.startswith("zoo:"):
        name = arg[4:]
        if name not in zoo.ZOO:
            raise RopeError(f"{arg!r}: no zoo entry {name!r}; known: {', '.join(zoo.ZOO)}")
        e = zoo.ZOO[name]
        return arg, e.fn, e.head_dim
    if os.path.exists(arg):
        import ropekit

        from ..doctor.probe import spec_rope_fn

        spec = ropekit.from_config(arg)
        return arg, spec_rope_fn(spec, precision=precision), spec.head_dim
    if ":" in arg and not arg.startswith(":"):
        mod_name, _, attr = arg.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # user modules next to where the command runs
        try:
            obj = importlib.import_module(mod_name)
        except ImportError as exc:
            raise RopeError(f"{arg!r}: cannot import module {mod_name!r} ({exc})") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise RopeError(f"{arg!r}: module {mod_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if isinstance(obj, zoo.ZooEntry):
            return arg, obj.fn, obj.head_dim
        if not callable(obj):
            raise RopeError(f"{arg!r} is a {type(obj).__name__}, not a function fn(x, positions)")
        dim = head_dim if head_dim is not None else getattr(obj, "head_dim", None)
        if dim is None:
            raise RopeError(f"{arg!r}: head_dim unknown; pass --head-dim N")
        return arg, obj, int(dim)
    raise RopeError(f"{arg!r} is neither package.module:function, zoo:NAME, nor an existing config path")


def config_heads(path: str) -> int | None:
    """Attention heads named in a config.json / params.json (for the ``permute_qk`` fix), or None.
    Read only; anything unexpected means "unknown", never an error (from_config already judged it)."""
    from ..dialects.reading import read_json_file

    candidates = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in ("config.json", "params.json")]
    for c in candidates:
        if not (os.path.isfile(c) and c.endswith(".json")):
            continue
        try:
            cfg = read_json_file(c)  # the project's one JSON reader (regular files only)
        except RopeError:
            return None
        if isinstance(cfg, dict):
            cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
            n = cfg.get("num_attention_heads", cfg.get("n_heads"))
            return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
    return None


# ---------------------------------------------------------------------------------------------
# the zoo report
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


def _verdict(rep) -> str:
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


def _scaling(fp) -> str:
    if fp.spec is None or fp.spec.scaling is None:
        return "-" if fp.spec is not None else "?"
    s = fp.spec.scaling
    return f"{s.kind}({getattr(s, 'factor', '')})" if hasattr(s, "factor") else s.kind


def _print_zoo(rows, fixes) -> None:
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
                _scaling(fp),
                f"{fp.offset:+g}" if fp.offset else "0",
                fp.precision or "-",
                _verdict(rep),
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
            _print_fix(f"transformers -> {e.name}", rep)
    for x, y, rep in fixes:
        if not rep.equivalent:
            _print_fix(f"{x} -> {y}", rep)


def _print_fix(title: str, rep) -> None:
    ok = {True: "verified", False: "NOT verified", None: "not verifiable"}[rep.fix_verified]
    if rep.fix_remaining:
        ok += f" ({rep.fix_remaining} remains)"
    print(f"* {title} [{ok}]: {rep.explanation}")
    for line in rep.fix.splitlines():
        print(f"    fix: {line}")


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def run(args) -> int:
    from ..doctor.comparison import compare
    from ..doctor.probe import fingerprint

    if args.max_position < 16:
        raise RopeError(f"--max-position={args.max_position} must be >= 16")
    if args.head_dim is not None and args.head_dim < 2:
        raise RopeError(f"--head-dim={args.head_dim} must be >= 2")
    import torch

    dtype = getattr(torch, args.dtype)
    dtype_b = getattr(torch, args.dtype_b) if args.dtype_b else dtype
    if args.a is None:
        rows, fixes = zoo_report(args.max_position, args.all_pairs)
        if args.json:
            out = {
                "entries": [
                    {
                        "name": e.name,
                        "convention": e.convention,
                        "head_dim": e.head_dim,
                        "fingerprint": fp.to_dict(),
                        "verdict": _verdict(rep),
                        "comparison": rep.to_dict(),
                    }
                    for e, fp, rep in rows
                ],
                "pairs": [{"a": x, "b": y, "comparison": rep.to_dict()} for x, y, rep in fixes],
            }
            print(json.dumps(out, indent=2))
        else:
            _print_zoo(rows, fixes)
        return 0
    name_a, fn_a, dim_a = resolve(args.a, args.head_dim, args.precision)
    if args.b is None:
        fp = fingerprint(fn_a, dim_a, dtype=dtype, max_position=args.max_position)
        if args.json:
            print(json.dumps(fp.to_dict(), indent=2))
        else:
            print(f"{name_a}: {fp.summary()}")
            for note in fp.notes:
                print(f"  note: {note}")
        return 0 if fp.spec is not None else 1
    name_b, fn_b, dim_b = resolve(args.b, args.head_dim, args.precision)
    if dim_a != dim_b:
        raise RopeError(f"head_dim differs: {name_a} has {dim_a}, {name_b} has {dim_b}; nothing to compare")
    n_heads = args.n_heads
    if n_heads is None:  # the fix permutes B's weights: B's config knows their head count
        n_heads = next((n for n in (config_heads(x) for x in (args.b, args.a) if os.path.exists(x)) if n), None)
    rep = compare(
        fn_a,
        fn_b,
        dim_a,
        dtype=dtype,
        dtype_b=dtype_b,
        max_position=args.max_position,
        n_heads=n_heads,
        names=("A", "B"),
    )
    if args.json:
        print(json.dumps({"name_a": name_a, "name_b": name_b, **rep.to_dict()}, indent=2))
    else:
        print(f"A = {name_a}\nB = {name_b}")
        print(rep.report(show_mean=args.show_mean))
    return 0 if rep.equivalent else 1
