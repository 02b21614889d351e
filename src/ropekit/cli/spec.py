"""`ropekit spec`: the normalized RoPE spec of any supported config, or of the built-in catalog."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "spec",
        help="print the normalized RoPE spec of a config (or of the built-in catalog)",
        description=(
            "Print the normalized RoPE spec of a config.json / params.json / LitGPT model_config.yaml / "
            "model directory, or of a model in the built-in catalog of real-world configs."
        ),
        epilog=(
            "examples:\n  ropekit spec --catalog\n  ropekit spec path/to/model --json\n"
            "  ropekit spec Gemma-3-4B-it --layer-type sliding_attention"
        ),
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="config file, model directory, or catalog name")
    p.add_argument("--catalog", action="store_true", help="print the spec table of every built-in real-world config")
    p.add_argument("--layer-type", default=None, help="for per-layer-type configs (e.g. sliding_attention)")
    p.add_argument("--layout", default=None, help="half|interleaved, for families whose config does not say it")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="with --catalog: a markdown table")
    p.set_defaults(func=run)


def resolve_config(name: str):
    """A catalog name stands for its config dict; anything else is a path (shared by commands)."""
    import os

    from ..dialects.catalog import catalog_config
    from ..errors import RopeConfigError

    if os.path.exists(name):
        return name
    try:
        return catalog_config(name)
    except KeyError:
        from ..dialects.catalog import CATALOG

        raise RopeConfigError(
            f"{name!r} is neither a config path nor a catalog name; catalog: {', '.join(CATALOG)}"
        ) from None


def run(args) -> int:
    from ..dialects import from_config, layer_types_of
    from ..dialects.catalog import catalog_specs, spec_table
    from ..errors import RopeConfigError

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
    layer_types = [args.layer_type] if args.layer_type else (layer_types_of(config) or [None])
    rows = [(args.config, lt, from_config(config, layer_type=lt, layout=args.layout)) for lt in layer_types]
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
            print(f"{key:26s} {value}")
    return 0
