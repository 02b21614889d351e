"""`ropekit doctor [A [B]]`: which RoPE is this, are these two the same, and what to change.

* no argument: fingerprint every convention of the zoo, one table, verdicts against transformers'
  Llama RoPE of the same head size, and the fix for each difference (verified);
* ``A``: fingerprint one implementation;
* ``A B``: compare two; exit 0 when equivalent, 1 when not (with the explanation and the fix).

A and B are ``package.module:function`` (a ``fn(x[n, head_dim], positions[n])``; its head_dim
from ``--head-dim``, its ``head_dim`` attribute, or the other operand), ``zoo:NAME``, a catalog name
(``ropekit spec --catalog``), a config path, a model directory (transformers, Meta, LitGPT) or a
GGUF file.  One checkpoint: the RoPE each framework installed here would run for it (ropekit's
reading; the installed transformers and LitGPT measured through their own code; for GGUF, the
metadata's RoPE against transformers' gguf loader), markers, stored inv_freq, ignored keys, the
layout and rotary_dim in its trained q/k weights (fused q/k/v split by the family's row order),
every disagreement with its fix.  Two checkpoints with weights: per layer and q/k tensor, whether
B's rows are A's rows permuted, and by which ``permute_qk`` call.
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
  ropekit doctor path/to/model                     # a checkpoint: every framework's RoPE, disagreements, fixes
  ropekit doctor path/to/meta-or-litgpt-dir --json # Meta (params.json) and LitGPT (model_config.yaml) dirs too
  ropekit doctor model.gguf path/to/hf-model       # two checkpoints: the q/k row permutation between them
  ropekit doctor Llama-3.1-8B

exit codes: 0 equivalent (or the zoo report), 1 not equivalent (or no RoPE found), 2 bad input"""

#: the last line of the zoo report: what a new user does next
NEXT_STEP = (
    "point it at your model: ropekit doctor path/to/model (a model directory, config, GGUF file or catalog name)"
)

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
    """(name, fn, head_dim) for one command-line operand; head_dim is None for a function that
    carries none (the other operand, or --head-dim, supplies it)."""
    from ..doctor import zoo

    if arg.startswith("zoo:"):
        name = arg[4:]
        if name not in zoo.ZOO:
            raise RopeError(f"{arg!r}: no zoo entry {name!r}; known: {', '.join(zoo.ZOO)}")
        e = zoo.ZOO[name]
        return arg, e.fn, e.head_dim
    if os.path.exists(arg) or is_catalog_name(arg):
        import ropekit

        from ..doctor.probe import spec_rope_fn
        from .spec import resolve_config

        spec = ropekit.from_config(resolve_config(arg))
        return arg, spec_rope_fn(spec, precision=precision), spec.head_dim
    if ":" in arg and not arg.startswith(":"):
        obj = import_function(arg)
        if isinstance(obj, zoo.ZooEntry):
            return arg, obj.fn, obj.head_dim
        dim = head_dim if head_dim is not None else getattr(obj, "head_dim", None)
        return arg, obj, None if dim is None else int(dim)
    raise RopeError(
        f"{arg!r} is neither package.module:function, zoo:NAME, a catalog name (ropekit spec --catalog) "
        f"nor an existing config path"
    )


def config_notes(arg: str) -> list[str]:
    """What a reader wants said about a config operand (LitGPT's own yarn), else nothing."""
    if not (os.path.exists(arg) or is_catalog_name(arg)) or has_weights(arg):
        return []
    from ..dialects.litgpt import LITGPT_YARN_NOTE, looks_like_litgpt
    from ..dialects.reading import load
    from .spec import resolve_config

    try:
        data = load(resolve_config(arg)).data
    except RopeError:
        return []
    adj = data.get("rope_adjustments")
    if looks_like_litgpt(data) and isinstance(adj, dict) and ("beta_fast" in adj or "beta_slow" in adj):
        return [f"{arg}: {LITGPT_YARN_NOTE}"]
    return []


def is_catalog_name(arg: str) -> bool:
    from ..dialects.catalog import CATALOG

    return arg in CATALOG


def import_function(arg: str):
    """The object ``package.module:attr.attr`` names (user modules next to the cwd importable)."""
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
    if not callable(obj) and type(obj).__name__ != "ZooEntry":
        raise RopeError(f"{arg!r} is a {type(obj).__name__}, not a function fn(x, positions)")
    return obj


def head_dims(name_a: str, dim_a, name_b: str | None = None, dim_b=None) -> tuple[int, int | None]:
    """Each operand's head size, a function's taken from the other operand when it has none."""
    if dim_a is None:
        dim_a = dim_b
    if name_b is not None and dim_b is None:
        dim_b = dim_a
    for name, dim in ((name_a, dim_a), (name_b, dim_b)):
        if name is not None and dim is None:
            raise RopeError(f"{name!r}: head_dim unknown (a function without a head_dim attribute); pass --head-dim N")
    return dim_a, dim_b


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
# checkpoints
# ---------------------------------------------------------------------------------------------


def is_checkpoint(arg: str) -> bool:
    """A GGUF file, or a model directory (config and/or weights)."""
    from ..doctor.weights import is_gguf

    if is_gguf(arg):
        return True
    return os.path.isdir(arg) and any(
        os.path.exists(os.path.join(arg, n)) for n in ("config.json", "params.json", "model_config.yaml")
    )


def has_weights(arg: str) -> bool:
    from ..doctor.weights import has_qk_weights

    return has_qk_weights(arg)


def checkpoint_command(args) -> int:
    from ..doctor.checkpoint_report import doctor_checkpoint
    from ..doctor.report_text import checkpoint_text

    report = doctor_checkpoint(args.a, max_position=min(args.max_position, 2**16))
    if args.json:
        out = {
            "path": report.path,
            "readings": [
                {"framework": r.framework, "spec": None if r.spec is None else r.spec.to_dict(), "text": r.text}
                for r in report.readings
            ],
            "findings": [{"kind": f.kind, "text": f.text, "fix": f.fix, "problem": f.problem} for f in report.findings],
            "layout": None if report.layout is None else report.layout.to_dict(),
        }
        print(json.dumps(out, indent=2))
    else:
        print(checkpoint_text(report))
    return 1 if report.problems else 0


def checkpoint_pair_command(args) -> int:
    from ..doctor.checkpoint_diff import diff_checkpoints
    from ..doctor.infer_layout import infer_layout
    from ..doctor.report_text import checkpoint_pair_text
    from ..doctor.weights import geometry_of

    geometry = geometry_of(args.a)
    diff = diff_checkpoints(args.a, args.b, geometry)
    layouts = []
    for name, path in (("A", args.a), ("B", args.b)):
        try:
            layouts.append((name, infer_layout(path)))
        except RopeError:
            layouts.append((name, None))
    if args.json:
        print(
            json.dumps(
                {
                    "same_up_to_permutation": diff.same_up_to_permutation,
                    "permutation": diff.permutation,
                    "tensors": [vars(t) for t in diff.tensors],
                    "layouts": {n: None if r is None else r.to_dict() for n, r in layouts},
                },
                indent=2,
            )
        )
    else:
        print(f"A = {args.a}\nB = {args.b}")
        print(checkpoint_pair_text(diff, layouts))
    return 0 if diff.same_up_to_permutation else 1


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def run(args) -> int:
    from ..doctor.comparison import compare
    from ..doctor.probe import fingerprint
    from .doctor_zoo import print_zoo, verdict, zoo_report

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
                        "verdict": verdict(rep),
                        "comparison": rep.to_dict(),
                    }
                    for e, fp, rep in rows
                ],
                "pairs": [{"a": x, "b": y, "comparison": rep.to_dict()} for x, y, rep in fixes],
            }
            print(json.dumps(out, indent=2))
        else:
            print_zoo(rows, fixes)
            print()
            print(NEXT_STEP)
        return 0
    if args.b is None and is_checkpoint(args.a):
        return checkpoint_command(args)
    if args.b is not None and has_weights(args.a) and has_weights(args.b):
        return checkpoint_pair_command(args)
    name_a, fn_a, dim_a = resolve(args.a, args.head_dim, args.precision)
    if args.b is None:
        dim_a, _ = head_dims(name_a, dim_a)
        fp = fingerprint(fn_a, dim_a, dtype=dtype, max_position=args.max_position)
        if args.json:
            print(json.dumps(fp.to_dict(), indent=2))
        else:
            print(f"{name_a}: {fp.summary()}")
            for note in fp.notes:
                print(f"  note: {note}")
        return 0 if fp.spec is not None else 1
    name_b, fn_b, dim_b = resolve(args.b, args.head_dim, args.precision)
    dim_a, dim_b = head_dims(name_a, dim_a, name_b, dim_b)
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
        for note in config_notes(args.a) + config_notes(args.b):
            print(f"note: {note}")
    return 0 if rep.equivalent else 1
