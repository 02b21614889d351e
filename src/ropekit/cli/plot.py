"""`ropekit plot`: wavelength-per-pair and table-error-vs-position pictures of one or more specs."""

from __future__ import annotations

from .arguments import add_command, add_config_reading

KINDS = ("wavelengths", "error")


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "plot",
        run,
        help="pictures: wavelengths per pair per scaling, cos/sin table error vs position",
        description=(
            "Draw the wavelength of every rotating pair (log scale), or the float32 cos/sin table error "
            "against a float64 table over positions (transformers' float32 arithmetic and ropekit's exact "
            "tables), for one or more configs. Needs the 'plot' extra (matplotlib)."
        ),
        epilog=(
            "examples:\n  ropekit plot wavelengths Llama-2-7B Llama-3.1-8B Phi-3.5-mini-instruct -o wl.png\n"
            "  ropekit plot error Llama-3.1-8B --max-position 16777216 -o err.png"
        ),
    )
    p.add_argument("kind", choices=KINDS, help="which picture")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="config files, model directories or catalog names")
    p.add_argument("-o", "--output", required=True, help="image file to write (png, svg, pdf)")
    add_config_reading(p)
    p.add_argument("--max-position", type=int, default=2**24, help="error plot: last position (default 2**24)")


def run(args) -> int:
    from ..dialects import from_config
    from ..plot import plot_error, plot_wavelengths
    from .spec import resolve_config

    specs = {}
    for name in args.configs:
        specs[name] = from_config(resolve_config(name), layer_type=args.layer_type, layout=args.layout)
    if args.kind == "wavelengths":
        path = plot_wavelengths(specs, args.output)
    else:
        path = plot_error(specs, args.output, max_position=args.max_position)
    print(f"wrote {path}")
    return 0
