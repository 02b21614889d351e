"""`ropekit spec CONFIG`: the normalized RoPE spec of any supported config."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "spec",
        help="print the normalized RoPE spec of a config",
        description="Print the normalized RoPE spec of a config.json / params.json / model directory.",
        epilog="example: ropekit spec path/to/model --json",
    )
    p.add_argument("config", help="config.json, params.json, or a model directory")
    p.add_argument("--layer-type", default=None, help="for per-layer-type configs (e.g. sliding_attention)")
    p.add_argument("--layout", default=None, help="layout for families whose config does not say it")
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dialects import from_config

    kwargs = {"layer_type": args.layer_type}
    if args.layout:
        kwargs["layout"] = args.layout
    spec = from_config(args.config, **kwargs)
    if args.json:
        print(json.dumps(spec.to_dict(), indent=2))
    else:
        for key, value in spec.to_dict().items():
            print(f"{key:26s} {value}")
    return 0
