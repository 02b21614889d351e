"""Opening the output of each format inside the staging directory: its weight files (one
``Writer`` each, with the steps that go into it) and its small files (config, index, params).

Each file keeps the in-page offset of its source's pass-through bytes where it can (a safetensors
header padded with spaces, a ``.pth`` zip payload placed): the kernel copies those 2.5x faster.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .formats import dtypes
from .formats.base import Checkpoint
from .formats.file_io import PAGE, best_alignment
from .plan import Plan, Step
from .stream import Writer, Writers

__all__ = ["open_destination", "copy_aux"]


def _entries(steps: list[Step]):
    return [(s.dst, s.dtype, s.shape) for s in steps]


def _alignment(ckpt: Checkpoint, steps: list[Step]) -> int | None:
    """Where a new safetensors file's data should start (mod a page) so that the most
    pass-through bytes keep their in-page offset."""
    pairs, rel = [], 0
    for s in steps:
        rng = ckpt.byte_range(s.src) if s.action == "copy" else None
        if rng is not None:
            pairs.append((rng[1], rel, s.nbytes))
        rel += s.nbytes
    return best_alignment(pairs)


def _pth(ckpt: Checkpoint, path: Path, steps: list[Step], writers: Writers) -> Writer:
    align = {}
    for s in steps:
        rng = ckpt.byte_range(s.src) if s.action == "copy" else None
        if rng is not None:
            align[s.dst] = rng[1] % PAGE
    return writers.pth(path, _entries(steps), align)


def _hf(ckpt: Checkpoint, tmp: Path, plan: Plan, dst_layout: str, writers: Writers):
    from .formats.hf_dir import LAYOUT_KEY, hf_config_with_layout, plan_shards, write_hf

    if ckpt.fmt == "hf":
        layout_changed = ckpt.config.get(LAYOUT_KEY, "half") != dst_layout
        config = hf_config_with_layout(ckpt.config, dst_layout)
        config_bytes = None if layout_changed else (ckpt.path / "config.json").read_bytes()
        out_shards = [(f, _entries(steps)) for f, steps in plan.shards]
        metadata = ckpt.metadata
        index_extra = {k: v for k, v in ckpt.index.items() if k != "weight_map"} if ckpt.index else None
        by_file = dict(plan.shards)
    else:  # from Meta: ropekit chooses the sharding, as save_pretrained would
        from .formats.meta_dir import hf_config_from_meta

        shapes = {n: ckpt.raw_info(n)[1] for n in ckpt.names()}
        dtype = dtypes.torch_name(ckpt.raw_info(ckpt.names()[0])[0])
        config = hf_config_with_layout(hf_config_from_meta(ckpt.config, ckpt.geometry, shapes, dtype), dst_layout)
        config_bytes, metadata, index_extra = None, {}, None
        out_shards = plan_shards(_entries(plan.steps()))
        flat = {s.dst: s for s in plan.steps()}
        by_file = {f: [flat[n] for n, _, _ in ents] for f, ents in out_shards}
    aligns = {f: _alignment(ckpt, by_file[f]) for f, _ in out_shards}
    clones = ckpt.files if ckpt.fmt == "hf" else None  # same file names: maybe the same bytes but q/k
    opened = write_hf(tmp, out_shards, config, metadata, index_extra, config_bytes, aligns, clones, writers.safetensors)
    return [(writer, by_file[f]) for f, writer in opened.items()]


def open_destination(
    ckpt: Checkpoint, tmp: Path, dst: Path, dst_fmt: str, dst_layout: str, plan: Plan, writers: Writers, meta_generation
) -> list[tuple[Writer, list[Step]]]:
    """Open DST's weight files under ``tmp`` and write its small files; [(writer, steps)]."""
    if dst_fmt == "hf":
        return _hf(ckpt, tmp, plan, dst_layout, writers)
    steps = plan.steps()
    if dst_fmt == "meta":
        from .formats.meta_dir import params_from_hf, write_params

        opened = [(_pth(ckpt, tmp / "consolidated.00.pth", steps, writers), steps)]
        if ckpt.fmt == "hf":
            w1 = next(s for s in steps if s.dst == "layers.0.feed_forward.w1.weight")
            params = params_from_hf(ckpt.config, ckpt.geometry, w1.shape[0], meta_generation)
            write_params(tmp / "params.json", params)
        else:
            shutil.copyfile(ckpt.path / "params.json", tmp / "params.json")
        return opened
    out = tmp / dst.name  # a state dict file
    if out.suffix == ".safetensors":
        metadata = ckpt.file.metadata if ckpt.file else {"format": "pt"}
        return [(writers.safetensors(out, _entries(steps), metadata, _alignment(ckpt, steps), ckpt.file), steps)]
    return [(_pth(ckpt, out, steps, writers), steps)]


def copy_aux(ckpt: Checkpoint, tmp: Path, dst_fmt: str, notes: list[str]) -> None:
    """Auxiliary files (tokenizer, generation config, ...) travel unchanged."""
    for rel in ckpt.aux_files:
        if dst_fmt == "meta" and rel == "checklist.chk":
            notes.append("checklist.chk not copied: its checksums describe the source files")
            continue
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt.path / rel, target, follow_symlinks=False)
