"""``ropekit.convert``: checkpoint conversion between RoPE layouts and formats.

1. **plan** (``plan.py``): for every source tensor decide copy / permute / drop, and which
   ``inv_freq`` tensors to add — from names and the attention geometry only, no data read.
2. **stream** (``stream.py``, ``destinations.py``): one tensor at a time into output files laid
   out up front; untouched tensors copied byte for byte in the kernel, q/k rows reordered exactly.
3. **install** (``install.py``): everything goes to a hidden sibling of DST, installed at the end
   in one atomic step; any failure (or Ctrl-C / SIGTERM from the CLI) removes it.  SRC is only read,
   and only its regular files (``source.py``).
4. **verify** (``verify.py``, ``verify=True``): the output re-read with the safetensors library and
   ``torch.load(weights_only=True)``, attention scores compared layer by layer.

Between safetensors checkpoints the whole conversion works on bytes and never imports torch
(``formats/raw.py``): importing it takes longer than copying a 2 GB checkpoint.  torch comes in
only for what needs numbers: ``inv_freq="add"`` / ``"verify"``, ``verify=True``, merging Meta's
model-parallel shards.

>>> import os, tempfile, torch, ropekit as rk
>>> from safetensors.torch import save_file
>>> d = tempfile.mkdtemp(); src = os.path.join(d, "sd.safetensors")
>>> wq = torch.randn(4 * 8, 16)
>>> save_file({"layers.0.attention.wq.weight": wq, "norm.weight": torch.ones(16)}, src)
>>> cfg = os.path.join(d, "params.json")
>>> _ = open(cfg, "w").write('{"dim": 32, "n_heads": 4, "n_layers": 1}')
>>> rep = rk.convert(src, os.path.join(d, "half.safetensors"), layout="half", config=cfg, progress=False)
>>> rep.permuted, rep.copied
(1, 1)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MissingDependencyError, RopeCheckpointError, RopeSpecError
from ..spec import RopeSpec
from .formats import open_checkpoint
from .formats.base import Checkpoint
from .install import Staging, check_free, check_paths, clean_stale
from .plan import Plan, Step, plan, target
from .stream import Progress, Streamer, Writers

__all__ = ["convert", "ConvertReport"]


@dataclass
class ConvertReport:
    """What ``convert`` did: formats and layouts on both sides, tensor counts, bytes, timings."""

    src: str
    dst: str
    src_format: str
    dst_format: str
    src_layout: str
    dst_layout: str
    copied: int = 0
    permuted: int = 0
    dropped: int = 0
    added: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    inv_freq_max_abs: float | None = None
    verify_max_abs: float | None = None
    verify_max_rel: float | None = None
    notes: list[str] = field(default_factory=list)


def spec_for(ckpt: Checkpoint, spec, why: str) -> RopeSpec:
    """The model's spec: ``spec`` (a RopeSpec or a path to its JSON), else from the checkpoint's config."""
    if isinstance(spec, RopeSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        import stat

        try:
            if not stat.S_ISREG(os.stat(spec).st_mode):  # a FIFO would block the read
                raise RopeSpecError(f"spec={str(spec)!r} is not a regular file")
            return RopeSpec.from_json(Path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            if isinstance(exc, RopeSpecError):
                raise
            raise RopeSpecError(f"spec={str(spec)!r}: not a RopeSpec JSON file ({str(exc)[:200]})") from None
    if spec is not None:
        raise RopeSpecError(f"spec={spec!r} must be a RopeSpec or the path of its JSON")
    if ckpt.config:
        from ..dialects import from_config

        try:
            return from_config(ckpt.config)
        except RopeSpecError as exc:
            raise RopeSpecError(
                f"{why} needs the model's RoPE spec and the config could not give it ({exc}); pass spec="
            ) from None
    raise RopeSpecError(f"{why} needs the model's RoPE spec: pass spec= (a RopeSpec or its JSON) or config=")


def _require(module: str, why: str, install: str) -> None:
    """Fail before anything is written when an optional module a requested step needs is missing."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{why} needs {module}, which is not installed: {install}") from None


def _check_dependencies(inv_freq: str, verify: bool) -> None:
    if inv_freq in ("add", "verify"):
        _require("torch", f"inv_freq={inv_freq!r}", "pip install torch")
    if verify:
        _require("torch", "verify=True", "pip install torch")
        _require("safetensors", "verify=True (re-reading the output independently)", "pip install 'ropekit[hf]'")


def _dry_run(ckpt, the_plan: Plan, dst: Path, dst_fmt, dst_layout, force, log) -> None:
    changes = [s for s in the_plan.steps() if s.action != "copy" or s.src != s.dst] + the_plan.dropped
    log(f"dry run: {ckpt.fmt} ({ckpt.layout}) -> {dst_fmt} ({dst_layout}); {len(changes)} tensor(s) change:")
    for s in changes:
        log("  " + s.describe())
    if (dst.exists() or dst.is_symlink()) and not force:
        log(f"dst={str(dst)!r} exists: the conversion itself needs force=True to replace it")


def _write(ckpt, dst: Path, dst_fmt, dst_layout, the_plan: Plan, report, options: dict) -> None:
    """Stream everything into the staging sibling and install it as DST."""
    from .destinations import copy_aux, open_destination

    is_file = dst_fmt == "state_dict"
    progress = Progress(sum(s.nbytes for s in the_plan.steps()), options["progress"])
    streamer = Streamer(ckpt, dst_layout, options["writers"], progress, options["after_tensor"])
    try:
        with Staging(dst, is_file) as tmp:
            opened = open_destination(
                ckpt, tmp, dst, dst_fmt, dst_layout, the_plan, options["writers"], options["meta_generation"]
            )
            streamer.run(opened)
            copy_aux(ckpt, tmp, dst_fmt, report.notes)
            Staging.install(tmp, dst, is_file)
    except OSError as exc:  # a full disk, no inodes, a read-only file system, a name too long ...
        where = exc.filename or dst
        raise RopeCheckpointError(f"dst={str(dst)!r}: conversion stopped at {where}: {exc.strerror or exc}") from None
    finally:
        streamer.close()
    c = streamer.counts
    report.copied, report.permuted, report.added, report.bytes_written = c.copied, c.permuted, c.added, c.bytes_written
    report.notes += c.notes


def convert(
    src,
    dst,
    *,
    layout: str | None = None,
    to: str | None = None,
    inv_freq: str = "keep",
    spec=None,
    config=None,
    src_layout: str | None = None,
    meta_generation: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    verify: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    after_tensor: Callable[[Step], None] | None = None,
    writers: Writers | None = None,
) -> ConvertReport:
    """Convert checkpoint ``src`` into ``dst`` (see the module docstring and ``ropekit convert --help``).

    layout: target q/k layout (``"half"`` / ``"interleaved"``); default: the format's own
    (Meta: interleaved, transformers: half) or the source's.  to: ``"hf"`` or ``"meta"``.
    inv_freq: ``keep`` | ``drop`` | ``add`` (the spec's exact frequencies, float32) | ``verify``
    (stored frequencies against the spec; error when off).  spec: a RopeSpec or a path to its JSON,
    for add/verify/``verify`` (default: ``from_config`` of the checkpoint's config).
    config / src_layout: head counts and q/k layout of a plain state-dict file.
    meta_generation: ``"llama2"`` | ``"llama3"``: the Meta code a params.json is written for
    (default: the generation the source's RoPE belongs to).  force: replace an existing DST
    (atomically).  verify: re-read DST independently and compare attention scores with SRC's.
    after_tensor: called after each tensor is written (progress hooks, tests).  writers: which
    class writes each output format (``stream.Writers``; tests inject reference writers).
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    t0 = time.perf_counter()
    src, dst = _guard_paths(Path(src), Path(dst), force=force, dry_run=dry_run, log=log)
    ckpt = open_checkpoint(src, config=config, layout=src_layout)
    dst_fmt, dst_layout = target(ckpt, layout, to)
    _check_dependencies(inv_freq, verify and not dry_run)
    the_spec = spec_for(ckpt, spec, f"inv_freq={inv_freq!r}") if inv_freq in ("add", "verify") else None
    the_plan = plan(ckpt, dst_fmt, dst_layout, inv_freq, the_spec, meta_generation)
    if getattr(ckpt, "layout_guessed", False) and dst_layout != ckpt.layout:
        log(f"source layout: {ckpt.layout} (from the tensor names; pass src_layout= to say otherwise)")
    report = ConvertReport(str(src), str(dst), ckpt.fmt, dst_fmt, ckpt.layout, dst_layout)
    report.dropped = len(the_plan.dropped)
    report.notes += the_plan.notes
    if inv_freq == "verify":
        _verify_stored_frequencies(ckpt, the_spec, report, log)
    if dry_run:
        _dry_run(ckpt, the_plan, dst, dst_fmt, dst_layout, force, log)
        return report
    options = dict(progress=progress, writers=writers or Writers(), after_tensor=after_tensor)
    options["meta_generation"] = meta_generation
    _write(ckpt, dst, dst_fmt, dst_layout, the_plan, report, options)
    report.seconds = time.perf_counter() - t0
    _log_summary(report, log)
    if verify:
        _verify_output(ckpt, dst, spec, the_spec, config, the_plan, report, log)
    return report


def _guard_paths(src: Path, dst: Path, *, force: bool, dry_run: bool, log) -> tuple[Path, Path]:
    """Refuse before any checkpoint byte is read: a missing SRC, links or special files in SRC, a DST
    that overlaps SRC, an existing DST without force=True (after finishing what a killed run left)."""
    if not (src.exists() or src.is_symlink()):
        raise FileNotFoundError(f"src={str(src)!r} does not exist")
    from .source import check_tree

    check_tree(src)
    check_paths(src, dst)
    if not dry_run:  # a run killed between two renames left the old DST aside: put it back first
        try:
            for line in clean_stale(dst):
                log(line)
        except OSError as exc:
            raise RopeCheckpointError(f"dst={str(dst)!r}: cannot clean up {exc.filename}: {exc.strerror}") from None
    check_free(dst, force or dry_run)  # a dry run writes nothing: an existing DST is only reported
    return src, dst


def _log_summary(report: ConvertReport, log) -> None:
    """What the conversion did, for the log: its notes, then one line of counts, bytes and time."""
    for note in report.notes:
        log(note)
    log(
        f"converted {report.src_format} ({report.src_layout}) -> {report.dst_format} ({report.dst_layout}): "
        f"{report.permuted} permuted, {report.copied} copied, {report.added} added, {report.dropped} dropped; "
        f"{report.bytes_written / 2**20:.1f} MiB in {report.seconds:.2f} s"
    )


def _verify_stored_frequencies(ckpt, spec, report, log) -> None:
    from .inv_freq import verify_inv_freq

    worst, count = verify_inv_freq(ckpt, spec)
    report.inv_freq_max_abs = worst
    if count:
        log(f"inv_freq verify: {count} stored tensor(s) match the spec, max |diff| {worst:.3e}")
    else:
        log("inv_freq verify: the checkpoint stores no inv_freq tensors; nothing to check")


def _verify_output(ckpt, dst: Path, spec, the_spec, config, the_plan: Plan, report, log) -> None:
    """verify=True: re-read DST independently and compare its attention scores with SRC's."""
    from .verify import check_conversion

    copies = [(s.src, s.dst) for s in the_plan.steps() if s.action == "copy"]
    file_layout = report.dst_layout if report.dst_format == "state_dict" else None

    spec_v = the_spec
    if spec_v is None:
        try:
            spec_v = spec_for(ckpt, spec, "verify=True")
        except RopeSpecError as exc:
            g = ckpt.geometry
            spec_v = RopeSpec(head_dim=g.head_dim, rotary_dim=g.rotary_dim)
            log(
                f"verify: no model spec ({str(exc).split(';')[0]}); using base 10000 for the check "
                "(layout errors show with any frequencies)"
            )
    explicit = spec is not None
    max_abs, max_rel, per_layer = check_conversion(ckpt, dst, spec_v, config, file_layout, explicit, copies)
    report.verify_max_abs, report.verify_max_rel = max_abs, max_rel
    log(
        f"verify: attention scores q.k on random inputs, {len(per_layer)} layer(s): "
        f"max |diff| {max_abs:.3e} (relative {max_rel:.3e})"
    )
    if max_rel > 1e-9:
        worst = max(per_layer, key=lambda kv: kv[1])
        raise RopeCheckpointError(
            f"verify failed: layer {worst[0]} attention scores differ by {worst[1]:.3e} (relative {max_rel:.3e})"
        )
