"""Checkpoint conversion between RoPE layouts and formats: plan, stream, write atomically.

1. **plan**: for every source tensor decide copy / permute / rename / drop, and which
   ``inv_freq`` tensors to add — from names and the attention geometry only, no data read.
2. **stream**: one tensor at a time.  The output header (safetensors) or zip layout (``.pth``,
   see ``formats.torch_zip.PthZipWriter``) is laid out first, so every tensor has its own byte range and
   peak memory is a few tensors, not the checkpoint.  Untouched tensors are copied byte for byte
   in the kernel (``copy_file_range``, runs of them in one call; where a file system cannot,
   through user space, and the report says so); a new safetensors header is padded so that those
   bytes keep their in-page offset, which the kernel copies 2.5x faster (a ``.pth`` zip pads each
   payload the same way).  Meanwhile a helper
   thread reads the q/k tensors by byte range (not memory-mapped: mapped pages would stay
   resident until the end), reorders their rows (exact, any dtype) and writes them.
3. **atomic**: everything goes to a hidden sibling ``.DST.ropekit-partial-PID`` that is renamed to
   DST at the end; any failure (or Ctrl-C / SIGTERM from the CLI) removes it.  SRC is only read.

Between safetensors checkpoints the whole conversion works on bytes and never imports torch
(``formats/raw.py``): importing it takes longer than copying a 2 GB checkpoint.  A permuted
tensor is read by ``preadv`` straight into its new row order; a shard whose tensors all stay in
place (a layout change) is copied whole in one kernel call, like ``cp``, and the q/k tensors are
written over it.  torch comes in only for what needs numbers or pickles: ``--inv-freq add`` /
``verify``, ``--verify``; ``.pth`` files are read and written as bytes too
(``formats/torch_zip.py``), only unusual ones go to ``torch.load``.

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
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RopeCheckpointError, RopeSpecError
from ..layouts import PERMUTED_ROLES, qk_row_count
from ..spec import RopeSpec, normalize_layout
from .formats import open_checkpoint, raw
from .formats.base import UNSUPPORTED_FAMILIES, Checkpoint, permute_tensor, role_of

__all__ = ["convert", "ConvertReport", "Step", "plan", "INV_FREQ_POLICIES"]

INV_FREQ_POLICIES = ("keep", "drop", "add", "verify")
PARTIAL = ".ropekit-partial-"
META_FAMILIES = ("llama", "mistral")


@dataclass
class Step:
    """What happens to one destination tensor (or to a dropped source tensor)."""

    action: str  # "copy" | "permute" | "drop" | "add"
    src: str | None
    dst: str | None
    role: str | None = None
    dtype: str | None = None  # safetensors' name ("BF16"; formats/raw.py), so planning needs no torch
    shape: tuple[int, ...] | None = None
    make: Callable[[], torch.Tensor] | None = None  # noqa: F821  "add": produces the tensor

    @property
    def nbytes(self) -> int:
        return raw.nbytes(self.dtype, self.shape)

    def describe(self) -> str:
        if self.action == "add":
            return f"add      {self.dst} {list(self.shape)} {raw.torch_name(self.dtype)}"
        if self.action == "drop":
            return f"drop     {self.src}"
        arrow = "" if self.src == self.dst else f" -> {self.dst}"
        return f"{self.action:8s} {self.src}{arrow}"


@dataclass
class ConvertReport:
    src: str
    dst: str
    src_format: str
    dst_format: str
    src_layout: str
    dst_layout: str
    copied: int = 0
    permuted: int = 0
    renamed: int = 0
    dropped: int = 0
    added: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    inv_freq_max_abs: float | None = None
    verify_max_abs: float | None = None
    verify_max_rel: float | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# spec (for inv_freq add/verify and --verify)
# ---------------------------------------------------------------------------------------------


def _spec_for(ckpt: Checkpoint, spec, why: str) -> RopeSpec:
    if isinstance(spec, RopeSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        try:
            return RopeSpec.from_json(Path(spec).read_text())
        except (OSError, ValueError) as exc:
            raise RopeSpecError(f"--spec {spec}: not a RopeSpec JSON file ({exc})") from None
    if ckpt.config:
        from ..dialects import from_config

        try:
            return from_config(ckpt.config)
        except RopeSpecError as exc:
            raise RopeSpecError(
                f"{why} needs the model's RoPE spec and the config could not give it ({exc}); pass --spec"
            ) from None
    raise RopeSpecError(f"{why} needs the model's RoPE spec: pass --spec spec.json (or --config)")


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------


def _target(ckpt: Checkpoint, layout: str | None, to: str | None) -> tuple[str, str]:
    dst_fmt = ckpt.fmt if to is None else to
    if dst_fmt not in ("hf", "meta", "state_dict"):
        raise RopeCheckpointError(f"--to={to!r} is not a format; use 'hf' or 'meta'")
    if (ckpt.fmt == "state_dict") != (dst_fmt == "state_dict"):
        raise RopeCheckpointError(
            f"cannot convert a {ckpt.fmt} checkpoint to {dst_fmt}: --to converts between 'hf' and 'meta' directories"
        )
    if layout is not None:
        dst_layout = normalize_layout(layout)
    elif dst_fmt == "meta":
        dst_layout = "interleaved"
    elif dst_fmt == "hf" and ckpt.fmt == "meta":
        dst_layout = "half"  # what transformers' rotate_half expects
    else:
        dst_layout = ckpt.layout
    if dst_fmt == "meta" and dst_layout != "interleaved":
        raise RopeCheckpointError(
            "Meta checkpoints are interleaved by definition (Meta rotates complex pairs); drop --layout half or --to meta"
        )
    return dst_fmt, dst_layout


def _inv_freq_name(qname: str, dst_fmt: str, meta_names: bool) -> str:
    if meta_names:
        return "rope.freqs"
    parts = qname.split(".")
    # ...layers.3.self_attn.q_proj.weight -> ...layers.3.self_attn.rotary_emb.inv_freq (transformers v4's place)
    return ".".join(parts[:-2] + ["rotary_emb", "inv_freq"])


def plan(ckpt: Checkpoint, dst_fmt: str, dst_layout: str, inv_freq: str = "keep", spec: RopeSpec | None = None):
    """[(dst file, [Step])] and the dropped steps.  Reads names, dtypes and shapes only."""
    if inv_freq not in INV_FREQ_POLICIES:
        raise RopeCheckpointError(f"--inv-freq={inv_freq!r} must be one of {INV_FREQ_POLICIES}")
    g = ckpt.geometry
    permute = dst_layout != ckpt.layout
    if permute and g is None:
        raise RopeCheckpointError(
            f"changing the layout of {ckpt.path} needs its head counts: pass --config config.json|params.json"
        )
    if g is not None and permute and g.family in UNSUPPORTED_FAMILIES:
        raise RopeCheckpointError(
            f"model_type={g.family!r}: convert does not permute its q/k tensors yet; use ropekit.permute.{UNSUPPORTED_FAMILIES[g.family]}"
        )
    if ckpt.fmt == "hf" and dst_fmt == "meta":
        if g.family not in META_FAMILIES:
            raise RopeCheckpointError(
                f"model_type={g.family!r} has no Meta checkpoint form (only {', '.join(META_FAMILIES)})"
            )
        from .formats.meta_dir import check_meta_expressible, hf_to_meta_name

        check_meta_expressible(ckpt.config, g)
        rename = hf_to_meta_name
    elif ckpt.fmt == "meta" and dst_fmt == "hf":
        from .formats.meta_dir import meta_to_hf_name

        rename = meta_to_hf_name
    else:
        rename = None
    meta_names = dst_fmt == "meta" or (dst_fmt == "state_dict" and any(".attention.wq." in n for n in ckpt.names()))

    dropped: list[Step] = []
    shards: list[tuple[str, list[Step]]] = []
    seen_inv = None
    found_qk = False
    added: set[str] = set()

    def add_inv_freq_after(name: str, steps: list[Step]) -> None:
        """--inv-freq add: one table per attention layer (transformers v4), one per model (Meta),
        placed right after the layer's q projection weight."""
        if inv_freq != "add" or role_of(name) not in ("q", "qkv_neox", "qkv_concat"):
            return
        if not name.endswith(".weight") or "lora_" in name:
            return
        step = _add_step(name, dst_fmt, meta_names, spec, ckpt)
        if step.dst not in added:
            added.add(step.dst)
            steps.append(step)

    for file, names in ckpt.shards:
        steps: list[Step] = []
        for name in names:
            role = role_of(name)
            dtype, shape = ckpt.raw_info(name)
            if role == "inv_freq":
                if inv_freq in ("drop", "add"):
                    dropped.append(Step("drop", name, None, role))
                    continue
                if rename is not None:  # Meta keeps one rope.freqs, transformers one per layer
                    if dst_fmt == "meta":
                        if seen_inv is not None:
                            dropped.append(Step("drop", name, None, role))
                            continue
                        seen_inv = name
                        steps.append(Step("copy", name, "rope.freqs", role, dtype, shape))
                    else:
                        for i in range(g.n_layers):
                            steps.append(
                                Step(
                                    "copy", name, f"model.layers.{i}.self_attn.rotary_emb.inv_freq", role, dtype, shape
                                )
                            )
                    continue
            dst = rename(name) if rename is not None else name
            if role in PERMUTED_ROLES:
                found_qk = True
                if permute:
                    if ".lora_A" in name:  # pragma: no cover - role_of never says q/k for lora_A
                        raise AssertionError(name)
                    expected, what = qk_row_count(role, g.n_heads, g.n_kv_heads, g.head_dim)
                    if not shape or shape[0] != expected:
                        raise RopeCheckpointError(
                            f"tensor {name} has shape {list(shape)} but {role} needs {expected} rows "
                            f"({what}); check num_attention_heads / num_key_value_heads"
                        )
                    steps.append(Step("permute", name, dst, role, dtype, shape))
                    add_inv_freq_after(name, steps)
                    continue
            steps.append(Step("copy", name, dst, role, dtype, shape))
            add_inv_freq_after(name, steps)
        shards.append((file, steps))
    if dst_fmt == "meta" and rename is not None:
        dsts = {s.dst for _, steps in shards for s in steps}
        if "output.weight" not in dsts and "tok_embeddings.weight" in dsts:
            # transformers ties lm_head to the embedding without storing it; Meta always stores output
            emb = next(s for _, steps in shards for s in steps if s.dst == "tok_embeddings.weight")
            shards[-1][1].append(Step("copy", emb.src, "output.weight", None, emb.dtype, emb.shape))
    if permute and not found_qk:
        raise RopeCheckpointError(
            f"{ckpt.path}: no q/k projection tensors found (looked for q_proj/k_proj, wq/wk, query_key_value, qkv_proj)"
        )
    return shards, dropped


def _add_step(qname: str, dst_fmt: str, meta_names: bool, spec: RopeSpec, ckpt: Checkpoint) -> Step:
    from ..frequencies import inv_freq as inv_freq_of

    def make():
        import torch

        # the exact float64 frequencies, rounded once to float32 (the dtype transformers keeps them in)
        return inv_freq_of(spec)[0].to(torch.float32)

    name = _inv_freq_name(qname, dst_fmt, meta_names)
    return Step("add", None, name, "inv_freq", "F32", (spec.n_pairs,), make)


# ---------------------------------------------------------------------------------------------
# inv_freq verification
# ---------------------------------------------------------------------------------------------


def verify_inv_freq(ckpt: Checkpoint, spec: RopeSpec) -> tuple[float, int]:
    """Max |stored - exact| over every stored inv_freq; RopeCheckpointError when one is off by more
    than its dtype can explain (32 ulp for fp32/fp64: transformers computes them in fp32 with pow;
    2 ulp for 16-bit)."""
    import torch

    from ..frequencies import inv_freq as inv_freq_of

    exact, _ = inv_freq_of(spec)
    worst, count = 0.0, 0
    for name in ckpt.names():
        if role_of(name) != "inv_freq":
            continue
        stored = ckpt.tensor(name)
        count += 1
        if stored.shape != exact.shape:
            raise RopeCheckpointError(
                f"tensor {name} has shape {list(stored.shape)} but the spec has {exact.numel()} frequencies (rotary_dim={spec.rotary_dim})"
            )
        diff = (stored.to(torch.float64) - exact).abs()
        rel = (diff / exact.abs().clamp_min(1e-300)).max().item()
        eps = torch.finfo(stored.dtype).eps
        tol = (32 if stored.element_size() >= 4 else 2) * eps
        worst = max(worst, diff.max().item())
        if rel > tol:
            i = int((diff / exact.abs().clamp_min(1e-300)).argmax())
            raise RopeCheckpointError(
                f"tensor {name} disagrees with the spec (base={spec.base:g}, rotary_dim={spec.rotary_dim}, "
                f"scaling={spec.scaling.kind if spec.scaling else None}): max |diff| {diff.max().item():.3e}, "
                f"relative {rel:.3e} > {tol:.1e} (frequency {i}: stored {stored[i].item():.9g}, expected {exact[i].item():.9g})"
            )
    return worst, count


# ---------------------------------------------------------------------------------------------
# paths and atomic output
# ---------------------------------------------------------------------------------------------


def _check_paths(src: Path, dst: Path, force: bool) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise RopeCheckpointError(f"DST {dst} is inside SRC {src}; write the conversion next to it")
    if dst_r in src_r.parents:
        raise RopeCheckpointError(f"SRC {src} is inside DST {dst}; replacing DST would delete SRC")
    if dst.exists() and not force:
        raise RopeCheckpointError(f"DST {dst} exists; pass --force to replace it")
    if not dst_r.parent.is_dir():
        raise FileNotFoundError(f"the parent directory of DST {dst} does not exist")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(dst: Path) -> None:
    """A run killed with SIGKILL cannot clean up; the next run for the same DST does."""
    for p in dst.parent.glob(f".{dst.name}{PARTIAL}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _install(tmp: Path, dst: Path, is_file: bool) -> None:
    staged = tmp / dst.name if is_file else tmp
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.parent / f".{dst.name}.ropekit-old-{os.getpid()}"
        os.rename(dst, old)
    try:
        os.rename(staged, dst)
    except BaseException:
        if old is not None:
            os.rename(old, dst)
        raise
    if is_file:
        tmp.rmdir()
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def _tensor_for(ckpt: Checkpoint, step: Step, src_layout: str, dst_layout: str):
    if step.action == "add":
        return step.make()
    t = ckpt.tensor(step.src)
    if step.action == "permute":
        t = permute_tensor(t, step.role, ckpt.geometry, src_layout, dst_layout, step.src)
    return t


def _alignment(ckpt: Checkpoint, steps: list[Step]) -> int | None:
    """Where the data of a new safetensors file should start (mod a page) so that the most
    pass-through bytes keep their in-page offset: the kernel copies those 2.5x faster."""
    from .formats.file_io import best_alignment

    pairs, rel = [], 0
    for s in steps:
        nbytes = s.nbytes
        rng = ckpt.byte_range(s.src) if s.action == "copy" else None
        if rng is not None:
            pairs.append((rng[1], rel, nbytes))
        rel += nbytes
    return best_alignment(pairs)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


#: permute q/k tensors as bytes (formats/raw.py) where they have a byte range; False: through
#: torch (``permute_tensor``), which the tests use to check both give the same bytes
RAW_PERMUTE = True


def _pth_writer(ckpt: Checkpoint, path: Path, steps: list[Step]):
    """A writer of a torch.save-format file for ``steps``: the zip is laid out without torch, each
    pass-through tensor's bytes at its source's in-page offset (the kernel copies those fastest)."""
    from .formats.file_io import PAGE
    from .formats.pth_writer import PthZipWriter

    align = {}
    for s in steps:
        rng = ckpt.byte_range(s.src) if s.action == "copy" else None
        if rng is not None:
            align[s.dst] = rng[1] % PAGE
    return PthZipWriter(path, [(s.dst, s.dtype, s.shape) for s in steps], align)


def _raw_permutable(ckpt: Checkpoint, step: Step, writer) -> tuple[str, int, int] | None:
    if not RAW_PERMUTE or step.action != "permute" or not hasattr(writer, "write_bytes"):
        return None
    return ckpt.byte_range(step.src)


def _write(ckpt, tmp: Path, dst: Path, dst_fmt, dst_layout, shards, report, progress, after_tensor):
    from concurrent.futures import ThreadPoolExecutor

    from .formats.file_io import tensor_bytes
    from .formats.hf_dir import LAYOUT_KEY, hf_config_with_layout, plan_shards, write_hf
    from .formats.safetensors_io import SafetensorsWriter

    all_steps = [s for _, steps in shards for s in steps]
    total = sum(s.nbytes for s in all_steps)
    rows = raw.RowReader()  # buffers reused across tensors and shards
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert", file=sys.stderr)
    else:
        bar = _NoBar()

    def done(step, nbytes):
        report.bytes_written += nbytes
        bar.update(nbytes)
        if after_tensor is not None:
            after_tensor(step)

    def note_fallback(writer):
        if writer.fallback and not any(n.startswith("pass-through") for n in report.notes):
            report.notes.append(
                f"pass-through tensors were copied through user space, not in the kernel ({writer.fallback})"
            )

    # Writers place every tensor at its own offset, so the work splits in two: this thread has
    # the kernel copy the untouched bytes (or a whole shard, see SafetensorsWriter(clone=)), a
    # helper thread reads the others, permutes and writes them, one at a time, so peak memory
    # stays one tensor (all of it releases the GIL).  A shard is finished (its helper work waited
    # for, the file closed) only after the next one's copies are issued: the helper writes one
    # shard's q/k while the kernel copies the next.
    pool = ThreadPoolExecutor(1, thread_name_prefix="ropekit-write")

    def make_and_write(writer, step) -> int:  # helper thread
        rng = _raw_permutable(ckpt, step, writer)
        if rng is not None:  # bytes in, bytes out: no torch

            def order():
                return raw.row_order(step.role, ckpt.geometry, ckpt.layout, dst_layout, step.shape[0])

            handle, data = rows.read(writer.source_fd(rng[0]), rng[1], rng[2], (step.role, step.shape), order, rng[0])
            try:
                writer.write_bytes(step.dst, data)
                return data.nbytes
            finally:
                rows.release(handle)
        t = _tensor_for(ckpt, step, ckpt.layout, dst_layout)
        writer.write_tensor(step.dst, t)
        return tensor_bytes(t).nbytes

    def start(writer, steps) -> Callable[[], None]:
        """Issue one file's work; returns the function that finishes it."""
        writer.flush()  # a clone is copied now, before the helper writes anything over it
        futures = []
        for step in steps:
            rng = ckpt.byte_range(step.src) if step.action == "copy" else None
            if rng is None:
                futures.append((step, pool.submit(make_and_write, writer, step)))
                continue
            writer.copy_range(step.dst, *rng)
            report.copied += 1
            report.renamed += step.src != step.dst
            done(step, rng[2] - rng[1])
        writer.flush()

        def finish():
            try:
                for step, future in futures:
                    nbytes = future.result()
                    report.permuted += step.action == "permute"
                    report.added += step.action == "add"
                    report.copied += step.action == "copy"
                    report.renamed += step.action != "add" and step.src != step.dst
                    done(step, nbytes)
                writer.close()
            finally:
                note_fallback(writer)

        return finish

    def stream_all(writers_steps) -> None:
        """[(writer, steps)]: stream every file, then close it; on any failure the helper is
        stopped before the files are closed (it may be writing into one)."""
        try:
            previous = None
            for writer, steps in writers_steps:
                finish = start(writer, steps)
                if previous is not None:
                    previous()
                previous = finish
            if previous is not None:
                previous()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for writer, _ in writers_steps:
                writer.abort()
                note_fallback(writer)

    try:
        if dst_fmt == "hf":
            entries = [(s.dst, s.dtype, s.shape) for _, steps in shards for s in steps]
            if ckpt.fmt == "hf":
                layout_changed = ckpt.config.get(LAYOUT_KEY, "half") != dst_layout
                config = hf_config_with_layout(ckpt.config, dst_layout)
                config_bytes = None if layout_changed else (ckpt.path / "config.json").read_bytes()
                out_shards = [(f, [(s.dst, s.dtype, s.shape) for s in steps]) for f, steps in shards]
                metadata = ckpt.metadata
                index_extra = {k: v for k, v in (ckpt.index or {}).items() if k != "weight_map"} if ckpt.index else None
                by_file = {f: steps for f, steps in shards}
            else:  # from Meta
                from .formats.meta_dir import hf_config_from_meta

                shapes = {n: ckpt.raw_info(n)[1] for n in ckpt.names()}
                dtype = raw.torch_name(ckpt.raw_info(ckpt.names()[0])[0])
                config = hf_config_with_layout(
                    hf_config_from_meta(ckpt.config, ckpt.geometry, shapes, dtype), dst_layout
                )
                config_bytes, metadata, index_extra = None, {}, None
                out_shards = plan_shards(entries)
                flat = {s.dst: s for _, steps in shards for s in steps}
                by_file = {f: [flat[n] for n, _, _ in ents] for f, ents in out_shards}
            aligns = {f: _alignment(ckpt, by_file[f]) for f, _ in out_shards}
            clones = ckpt.files if ckpt.fmt == "hf" else None  # same file names: maybe the same bytes but q/k
            writers = write_hf(tmp, out_shards, config, metadata, index_extra, config_bytes, aligns, clones)
            stream_all([(writer, by_file[f]) for f, writer in writers.items()])
        elif dst_fmt == "meta":
            from .formats.meta_dir import params_from_hf, write_params

            steps = [s for _, st in shards for s in st]
            writer = _pth_writer(ckpt, tmp / "consolidated.00.pth", steps)
            stream_all([(writer, steps)])
            if ckpt.fmt == "hf":
                w1 = next(s for s in steps if s.dst == "layers.0.feed_forward.w1.weight")
                write_params(tmp / "params.json", params_from_hf(ckpt.config, ckpt.geometry, w1.shape[0]))
            else:
                shutil.copyfile(ckpt.path / "params.json", tmp / "params.json")
        else:  # state dict file
            ((file, steps),) = shards
            out = tmp / dst.name
            entries = [(s.dst, s.dtype, s.shape) for s in steps]
            if out.suffix == ".safetensors":
                writer = SafetensorsWriter(
                    out,
                    entries,
                    ckpt.file.metadata if ckpt.file else {"format": "pt"},
                    _alignment(ckpt, steps),
                    ckpt.file,
                )
            else:
                writer = _pth_writer(ckpt, out, steps)
            stream_all([(writer, steps)])
        # auxiliary files (tokenizer, generation config, ...) travel unchanged
        for rel in ckpt.aux_files:
            if dst_fmt == "meta" and rel == "checklist.chk":
                report.notes.append("checklist.chk not copied: its checksums describe the source files")
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ckpt.path / rel, target)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------


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
    force: bool = False,
    dry_run: bool = False,
    verify: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    after_tensor: Callable[[Step], None] | None = None,
) -> ConvertReport:
    """Convert checkpoint ``src`` into ``dst`` (see the module docstring and ``ropekit convert --help``).

    layout: target q/k layout (``"half"`` / ``"interleaved"``); default: the format's own
    (Meta: interleaved, transformers: half) or the source's.  to: ``"hf"`` or ``"meta"``.
    inv_freq: ``keep`` | ``drop`` | ``add`` (the spec's exact frequencies, float32) | ``verify``
    (stored frequencies against the spec; error when off).  spec: a RopeSpec or a path to its JSON,
    for add/verify/--verify (default: ``from_config`` of the checkpoint's config).
    config / src_layout: head counts and q/k layout of a plain state-dict file.
    after_tensor: called after each tensor is written (progress hooks, tests).
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"SRC {src} does not exist")
    _check_paths(src, dst, force or dry_run)  # a dry run writes nothing: an existing DST is only reported
    ckpt = open_checkpoint(src, config=config, layout=src_layout)
    dst_fmt, dst_layout = _target(ckpt, layout, to)
    need_spec = inv_freq in ("add", "verify")
    the_spec = _spec_for(ckpt, spec, f"--inv-freq {inv_freq}") if need_spec else None
    shards, dropped = plan(ckpt, dst_fmt, dst_layout, inv_freq, the_spec)
    if getattr(ckpt, "layout_guessed", False) and dst_layout != ckpt.layout:
        log(f"source layout: {ckpt.layout} (from the tensor names; pass --src-layout to say otherwise)")
    report = ConvertReport(str(src), str(dst), ckpt.fmt, dst_fmt, ckpt.layout, dst_layout)
    report.dropped = len(dropped)

    if inv_freq == "verify":
        worst, count = verify_inv_freq(ckpt, the_spec)
        report.inv_freq_max_abs = worst
        if count:
            log(f"inv_freq verify: {count} stored tensor(s) match the spec, max |diff| {worst:.3e}")
        else:
            log("inv_freq verify: the checkpoint stores no inv_freq tensors; nothing to check")

    if dry_run:
        changes = [s for _, steps in shards for s in steps if s.action != "copy" or s.src != s.dst] + dropped
        log(f"dry run: {ckpt.fmt} ({ckpt.layout}) -> {dst_fmt} ({dst_layout}); {len(changes)} tensor(s) change:")
        for s in changes:
            log("  " + s.describe())
        if dst.exists() and not force:
            log(f"DST {dst} exists: the conversion itself needs --force to replace it")
        return report

    is_file = dst_fmt == "state_dict"
    _remove_stale_partials(dst)
    tmp = dst.parent / f".{dst.name}{PARTIAL}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:  # mkdir inside: an interrupt landing just after it must still clean up
        tmp.mkdir()
        _write(ckpt, tmp, dst, dst_fmt, dst_layout, shards, report, progress, after_tensor)
        _install(tmp, dst, is_file)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - t0
    for note in report.notes:
        log(note)
    log(
        f"converted {ckpt.fmt} ({ckpt.layout}) -> {dst_fmt} ({dst_layout}): {report.permuted} permuted, "
        f"{report.copied} copied, {report.added} added, {report.dropped} dropped; "
        f"{report.bytes_written / 2**20:.1f} MiB in {report.seconds:.2f} s"
    )
    if verify:
        from .verify import compare_scores

        spec_v = the_spec
        if spec_v is None:
            try:
                spec_v = _spec_for(ckpt, spec, "--verify")
            except RopeSpecError as exc:
                g = ckpt.geometry
                spec_v = RopeSpec(head_dim=g.head_dim, rotary_dim=g.rotary_dim)
                log(
                    f"verify: no model spec ({str(exc).split(';')[0]}); using base 10000 for the check (layout errors show with any frequencies)"
                )
        dst_ckpt = open_checkpoint(dst, config=config, layout=dst_layout if is_file else None)
        max_abs, max_rel, per_layer = compare_scores(ckpt, dst_ckpt, spec_v)
        report.verify_max_abs, report.verify_max_rel = max_abs, max_rel
        log(
            f"verify: attention scores q.k on random inputs, {len(per_layer)} layer(s): max |diff| {max_abs:.3e} (relative {max_rel:.3e})"
        )
        if max_rel > 1e-9:
            worst = max(per_layer, key=lambda kv: kv[1])
            raise RopeCheckpointError(
                f"verify failed: layer {worst[0]} attention scores differ by {worst[1]:.3e} (relative {max_rel:.3e})"
            )
    return report
