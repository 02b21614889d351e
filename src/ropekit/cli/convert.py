"""`ropekit convert SRC DST`: move a checkpoint between RoPE layouts and formats (streaming, atomic)."""

from __future__ import annotations

import re
import signal
import sys

from ..layouts import LAYOUTS  # every layout name and alias the library accepts
from .arguments import add_command, add_switches

#: convert()'s parameter names -> this command's operands and flags (library errors name parameters)
_FLAGS = {
    "src_layout": "--src-layout",
    "inv_freq": "--inv-freq",
    "meta_generation": "--meta-generation",
    "layout": "--layout",
    "to": "--to",
    "spec": "--spec",
    "config": "--config",
    "src": "SRC",
    "dst": "DST",
}
_PARAM = re.compile(r"(?<![\w.\-])(" + "|".join(_FLAGS) + r")=(?=(\S?))")
_SWITCHES = {"force=True": "--force", "verify=True": "--verify", "dry_run=True": "--dry-run"}


def cli_words(text: str) -> str:
    """A library message in this command's words.

    >>> cli_words("to='safetensors' is not a format; pass spec= or config=; force=True replaces it")
    "--to='safetensors' is not a format; pass --spec or --config; --force replaces it"
    >>> cli_words("dst='out' exists")
    "DST 'out' exists"
    """
    for param, flag in _SWITCHES.items():
        text = text.replace(param, flag)

    def flag(m: re.Match) -> str:
        name, following = _FLAGS[m.group(1)], m.group(2)
        if name.isupper():  # an operand: "DST 'out'"
            return name + " "
        return name + ("=" if following and following not in ";,)" else "")

    return _PARAM.sub(flag, text)


EXAMPLES = """examples:
  ropekit convert llama-hf/ llama-meta/ --to meta --verify
  ropekit convert llama-meta/ llama-hf/ --to hf
  ropekit convert model/ model-interleaved/ --layout interleaved
  ropekit convert old.safetensors new.safetensors --inv-freq drop
  ropekit convert model/ model2/ --inv-freq verify --spec spec.json --dry-run
"""


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "convert",
        run,
        help="convert a checkpoint between RoPE layouts (half/interleaved) and formats (hf/meta)",
        description=(
            "Convert a checkpoint between q/k layouts and formats. Tensors RoPE does not touch are copied "
            "byte for byte; q/k rows are permuted exactly. Streams one tensor at a time and writes DST "
            "atomically (a hidden sibling renamed at the end); SRC is only read."
        ),
        epilog=EXAMPLES,
    )
    p.add_argument("src", help="transformers dir, Meta dir (params.json + consolidated.*.pth) or state-dict file")
    p.add_argument("dst", help="output path (must not exist unless --force; not inside SRC)")
    p.add_argument("--layout", choices=list(LAYOUTS), help="q/k layout of DST")
    p.add_argument("--to", choices=["hf", "meta"], help="format of DST (default: SRC's)")
    p.add_argument(
        "--inv-freq",
        default="keep",
        choices=["keep", "drop", "add", "verify"],
        help="stored rotary_emb.inv_freq / rope.freqs: keep them, drop them, add the spec's exact "
        "ones, or verify them against the spec (default: keep)",
    )
    p.add_argument("--spec", help="RopeSpec JSON (ropekit spec --json) for --inv-freq add/verify and --verify")
    p.add_argument("--config", help="config.json / params.json with the head counts of a state-dict SRC")
    p.add_argument("--src-layout", choices=list(LAYOUTS), help="q/k layout of a state-dict SRC")
    p.add_argument(
        "--meta-generation",
        choices=["llama2", "llama3"],
        help="with --to meta: the Meta code params.json is written for (llama2: no rope_theta key; "
        "default: the generation the source's RoPE belongs to)",
    )
    add_switches(
        p,
        {
            "--verify": "after writing, compare attention scores q.k per layer of SRC and DST",
            "--force": "replace an existing DST (atomically)",
            "--dry-run": "print which tensors would change; write nothing",
            "--no-progress": "no progress bar",
        },
    )


def _raise_interrupt(signum, frame):
    # one interrupt is enough: a second SIGTERM during the clean-up must not cut it short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt  # unwinds through the converter's cleanup like Ctrl-C


def run(args) -> int:
    from ..conversion.driver import convert
    from ..errors import RopeError

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        convert(
            args.src,
            args.dst,
            layout=args.layout,
            to=args.to,
            inv_freq=args.inv_freq,
            spec=args.spec,
            config=args.config,
            src_layout=args.src_layout,
            force=args.force,
            dry_run=args.dry_run,
            verify=args.verify,
            meta_generation=args.meta_generation,
            progress=not args.no_progress,
            log=lambda line: print(cli_words(line), file=sys.stderr),
        )
    except RopeError as exc:
        exc.args = (cli_words(str(exc)),)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
