"""`ropekit spec`: the normalized RoPE spec of any supported config, or of the built-in catalog."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings

from ..mrope import describe_axes
from .arguments import add_command, add_config_reading


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "spec",
        run,
        help="print the normalized RoPE spec of a config (or of the built-in catalog)",
        description=(
            "Print the normalized RoPE spec of a config.json / params.json / LitGPT model_config.yaml / "
            "model directory, or of a model in the built-in catalog of real-world configs."
        ),
        epilog=(
            "examples:\n  ropekit spec --catalog\n  ropekit spec path/to/model --json\n"
            "  ropekit spec Gemma-3-4B-it --layer-type sliding_attention\n"
            "  ropekit spec config.json --transformers-version 4.38.1\n"
            "  ropekit spec config.json --to both -o config.both.json   # keys 4.x and 5.x both read"
        ),
    )
    p.add_argument("config", nargs="?", help="config file, model directory, or catalog name")
    p.add_argument("--catalog", action="store_true", help="print the spec table of every built-in real-world config")
    add_config_reading(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="with --catalog: a markdown table")
    p.add_argument(
        "--transformers-version",
        default=None,
        help="read the config as this transformers release does (default: the installed one)",
    )
    p.add_argument(
        "--to",
        choices=("v4", "v5", "both"),
        default=None,
        help="rewrite a transformers config's RoPE keys for 4.x (rope_theta/rope_scaling), 5.x (rope_parameters) "
        "or both; needs -o",
    )
    p.add_argument("-o", "--output", default=None, help="with --to: the file to write (never the input)")


def resolve_config(name: str):
    """The config an operand stands for: a catalog name (e.g. ``"Llama-3.1-8B"``) gives its config
    dict, anything else is a path (config file or model directory).  The one resolver every
    command uses for a config operand (``spec``, ``doctor``, ...).

    >>> resolve_config("Llama-3.1-8B")["rope_scaling"]["rope_type"]
    'llama3'
    """
    from ..dialects.catalog import catalog_config
    from ..errors import RopeConfigError

    if os.path.lexists(name):
        return name
    try:
        return catalog_config(name)
    except KeyError:
        from ..dialects.catalog import CATALOG

        raise RopeConfigError(
            f"{name!r} is neither a config path nor a catalog name; catalog: {', '.join(CATALOG)}"
        ) from None


def _write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory + rename, so a
    reader never sees half a file and an interrupted run leaves the old file (or none)."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ropekit-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _rewrite(args, config) -> int:
    from ..dialects import dialect_of, load
    from ..dialects.generations import releases_that_differ, with_generation_keys
    from ..errors import RopeConfigError

    if not args.output:
        raise RopeConfigError("--to needs -o FILE (the input is never modified)")
    source = load(config)
    if dialect_of(source) != "hf":
        raise RopeConfigError(
            f"--to rewrites transformers config.json files; {args.config} is a {dialect_of(source)} config"
        )
    if isinstance(config, str):
        inputs = {os.path.realpath(config), os.path.realpath(os.path.join(config, "config.json"))}
        if os.path.realpath(args.output) in inputs:
            raise RopeConfigError(f"-o {args.output} is the input; write the rewritten config to another file")
    out = with_generation_keys(source.data, args.to)
    _write_atomically(args.output, json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.output} ({args.to} RoPE keys)")
    if args.to != "v5":
        for line in releases_that_differ(out):
            print(f"warning: transformers {line}", file=sys.stderr)
    return 0


def run(args) -> int:
    from ..dialects import from_config, layer_types_of
    from ..dialects.catalog import catalog_specs
    from ..dialects.spec_table import spec_table
    from ..errors import RopeConfigError, RopeConfigWarning

    if args.catalog:
        if args.config:
            raise RopeConfigError("pass either CONFIG or --catalog, not both")
        rows = catalog_specs()
        if args.json:
            print(json.dumps([{"model": n, "layer_type": lt, "spec": s.to_dict()} for n, lt, s in rows], indent=2))
        else:
            print(spec_table(rows, markdown=args.markdown))
        return 0
    if not args.config:
        raise RopeConfigError("CONFIG is required (a config file, a model directory or a catalog name), or --catalog")
    config = resolve_config(args.config)
    if args.to:
        return _rewrite(args, config)
    if args.output:
        raise RopeConfigError("-o FILE goes with --to v4|v5|both")
    version = args.transformers_version
    layer_types = (
        [args.layer_type] if args.layer_type else (layer_types_of(config, transformers_version=version) or [None])
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RopeConfigWarning)
        rows = [
            (args.config, lt, from_config(config, layer_type=lt, layout=args.layout, transformers_version=version))
            for lt in layer_types
        ]
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, RopeConfigWarning)):
        print(f"warning: {message}", file=sys.stderr)
    if args.json:
        if len(rows) == 1:
            print(json.dumps(rows[0][2].to_dict(), indent=2))
        else:
            print(json.dumps({lt: s.to_dict() for _, lt, s in rows}, indent=2))
        return 0
    for _, layer_type, spec in rows:
        if layer_type is not None:
            print(f"[{layer_type}]")
        for key, value in spec.to_dict().items():
            if key == "scaling" and value is not None:
                value = {k: (f"[{len(v)} values]" if isinstance(v, list) else v) for k, v in value.items()}
            if key == "mrope_axes" and value is not None:  # one axis per pair: run-length encoded
                value = describe_axes(tuple(value))
            print(f"{key:26s} {value}")
    return 0
