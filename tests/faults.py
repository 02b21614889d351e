"""Fault injection into a conversion: every write, rename, copy and writer call is counted, and a
run can be made to fail at call number k (an exception in-process, a signal in a subprocess).

``python tests/faults.py [long]`` prints the outcome counts for the tree on PYTHONPATH (how the
before / after figures in the conversion notes were taken)."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

#: (module, attribute) of every call a fault can land on; missing ones are skipped (older trees)
POINTS = [
    ("os", "rename"),
    ("os", "replace"),
    ("os", "mkdir"),
    ("os", "pwrite"),
    ("os", "write"),
    ("os", "copy_file_range"),
    ("shutil", "copyfile"),
    ("ropekit.conversion.install", "exchange"),
    ("ropekit.conversion.formats.safetensors_io", "SafetensorsWriter.__init__"),
    ("ropekit.conversion.formats.safetensors_io", "SafetensorsWriter.write_bytes"),
    ("ropekit.conversion.formats.safetensors_io", "SafetensorsWriter.copy_range"),
    ("ropekit.conversion.formats.safetensors_io", "SafetensorsWriter.close"),
    ("ropekit.conversion.formats.pth_writer", "PthZipWriter.__init__"),
    ("ropekit.conversion.formats.fixed_writer", "FixedLayoutWriter.write_bytes"),
    ("ropekit.conversion.formats.fixed_writer", "FixedLayoutWriter.copy_range"),
    ("ropekit.conversion.formats.pth_writer", "PthZipWriter.close"),
    # where the same classes lived before (the tree of main, for the before figures)
    ("ropekit.conversion.formats.torch_zip", "PthZipWriter.__init__"),
    ("ropekit.conversion.formats.torch_zip", "FixedLayoutWriter.write_bytes"),
    ("ropekit.conversion.formats.torch_zip", "FixedLayoutWriter.copy_range"),
    ("ropekit.conversion.formats.torch_zip", "PthZipWriter.close"),
]


class Injected(RuntimeError):
    """The failure a fault raises (distinguishable from any real error)."""


class Faults:
    """Count calls to every point; at call ``fail_at`` (1-based) run ``action`` instead."""

    def __init__(self, fail_at: int | None = None, action=None, only: str | None = None):
        """``only``: count calls to that point alone (e.g. ``"os.rename"``)."""
        self.fail_at, self.action = fail_at, action or (lambda where: (_ for _ in ()).throw(Injected(where)))
        self.only = only
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._saved = []

    def _wrap(self, where: str, fn):
        def wrapped(*args, **kwargs):
            # only the conversion's own threads: the caller and ropekit's helpers (a test runner's
            # I/O threads write too, and must not be hit)
            me = threading.current_thread()
            if me is not self._owner and not me.name.startswith("ropekit-"):
                return fn(*args, **kwargs)
            if self.only is not None and where != self.only:
                return fn(*args, **kwargs)
            with self._lock:
                self.calls.append(where)
                hit = self.fail_at is not None and len(self.calls) == self.fail_at
            if hit:
                self.action(where)
            return fn(*args, **kwargs)

        return wrapped

    def __enter__(self):
        import importlib

        self._owner = threading.current_thread()
        for module, attr in POINTS:
            try:
                owner = importlib.import_module(module)
            except ImportError:
                continue
            *path, name = attr.split(".")
            for p in path:
                owner = getattr(owner, p, None)
            if owner is None or not hasattr(owner, name):
                continue
            original = owner.__dict__[name] if name in getattr(owner, "__dict__", {}) else getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._wrap(f"{module.rsplit('.', 1)[-1]}.{attr}", original))
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        return False


def content_digest(path: Path) -> str | None:
    """sha256 over the names and bytes of a file or tree (None when absent)."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def hidden_siblings(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.parent.glob(f".{dst.name}.ropekit-*"))


#: the scenarios: (name, convert() keyword arguments, DST exists before the run)
SCENARIOS = [
    ("hf-layout-new", dict(layout="interleaved"), False),
    ("hf-layout-force", dict(layout="interleaved", force=True), True),
    ("hf-to-meta-force", dict(to="meta", force=True), True),
    ("two-step-force", dict(layout="interleaved", force=True), True),  # a file system without RENAME_EXCHANGE
]


class NoExchange:
    """Make ``install.exchange`` report a file system without RENAME_EXCHANGE (the two-step path)."""

    def __init__(self, on: bool):
        self.on, self.saved = on, None

    def __enter__(self):
        try:
            from ropekit.conversion import install
        except ImportError:  # a tree before install.py: always two renames
            return self
        if self.on:
            self.saved = install.exchange
            install.exchange = lambda a, b: False
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            from ropekit.conversion import install

            install.exchange = self.saved
        return False


class Outcomes:
    """The tallies the notes report."""

    KINDS = (
        "attempts",
        "clear_errors",
        "raw_tracebacks",
        "silent_wrong",
        "crashes",
        "data_lost",
        "left_behind",
        "restored_by_next_run",
    )

    def __init__(self):
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.failures: list[str] = []

    def add(self, kind: str, what: str | None = None) -> None:
        self.counts[kind] += 1
        if what is not None:
            self.failures.append(f"{kind}: {what}")


def judge(out: Outcomes, label: str, src_before, src_after, dst_before, dst_after, reference, siblings_after_next):
    """One case: SRC unchanged; DST the old one or the complete new one; nothing hidden left."""
    if src_after != src_before:
        out.add("data_lost", f"{label}: SRC changed")
    elif dst_after not in (dst_before, reference):
        if dst_after is None:
            out.add("data_lost", f"{label}: DST gone")
        else:
            out.add("silent_wrong", f"{label}: DST neither old nor new")
    if siblings_after_next:
        out.add("left_behind", f"{label}: {siblings_after_next} after the next run")


def run_in_process(work: Path, make_src, ks=None) -> Outcomes:
    """Every scenario, failing at each call number in ``ks(n)`` (default: all)."""
    from ropekit import convert

    out = Outcomes()
    quiet = dict(progress=False, log=lambda s: None)
    for name, kw, exists in SCENARIOS:
        base = work / name
        src = make_src(base / "src")
        ref = base / "ref"
        convert(src, ref, **{k: v for k, v in kw.items() if k != "force"}, **quiet)
        reference = content_digest(ref)
        dst = base / "dst"

        def fresh():
            shutil.rmtree(dst, ignore_errors=True)
            if exists:  # an older output: the source copied as it is
                convert(src, dst, **quiet)

        fresh()
        with Faults() as counting:
            convert(src, dst, **dict(kw, force=True), **quiet)
        n = len(counting.calls)
        for k in ks(n) if ks else range(1, n + 1):
            with NoExchange(name.startswith("two-step")):
                _one_case(out, name, kw, k, n, src, dst, fresh, reference, quiet)
    return out


def _one_case(out, name, kw, k, n, src, dst, fresh, reference, quiet):
    """Fail call ``k`` of ``n`` of one scenario (an exception, KeyboardInterrupt every other k), judge."""
    from ropekit import convert
    from ropekit.errors import RopeError

    fresh()
    src_before, dst_before = content_digest(src), content_digest(dst)
    out.add("attempts")
    label = f"{name} #{k}/{n}"
    exc = KeyboardInterrupt if k % 2 else Injected
    try:
        with Faults(k, action=lambda where: (_ for _ in ()).throw(exc(where))) as f:
            convert(src, dst, **kw, **quiet)
        label += f" ({f.calls[k - 1] if len(f.calls) >= k else '?'})"
    except (Injected, KeyboardInterrupt, RopeError):
        out.add("clear_errors")
    except Exception as e:  # a raw error from deep inside: what the CLI would print as a traceback
        out.add("raw_tracebacks", f"{label}: {type(e).__name__}: {e}")
    dst_after = content_digest(dst)
    convert(src, dst, **dict(kw, force=True), **quiet)  # the next run for the same DST
    judge(out, label, src_before, content_digest(src), dst_before, dst_after, reference, hidden_siblings(dst))


_CHILD = """
import os, signal, sys
sys.path[:0] = [{tests!r}]
import faults
sig, at = int(sys.argv[1]), sys.argv[2]
only, k = at.rsplit(":", 1) if ":" in at else (None, at)
two_step = faults.NoExchange(os.environ.get("ROPEKIT_TEST_TWO_STEP") == "1")
with two_step, faults.Faults(int(k), action=lambda where: os.kill(os.getpid(), sig), only=only):
    from ropekit.cli import main
    code = main(sys.argv[3:])
sys.exit(code)
"""


def run_killed(work: Path, make_src, src_root: Path, cases, two_step: bool = False) -> Outcomes:
    """``cases``: [(signal, k)] for the hf-layout-force scenario, each in its own process; k is a
    call number, or ``"point:n"`` for the n-th call to one point (``"os.rename:1"``)
    (``two_step``: on a file system without RENAME_EXCHANGE)."""
    from ropekit import convert

    out = Outcomes()
    quiet = dict(progress=False, log=lambda s: None)
    base = work / "killed"
    src = make_src(base / "src")
    convert(src, base / "ref", layout="interleaved", **quiet)
    reference = content_digest(base / "ref")
    dst = base / "dst"
    env = dict(os.environ, PYTHONPATH=f"{Path(__file__).parent}{os.pathsep}{src_root}")
    env["ROPEKIT_TEST_TWO_STEP"] = "1" if two_step else "0"
    child = _CHILD.format(tests=str(Path(__file__).parent))
    for sig, k in cases:
        shutil.rmtree(dst, ignore_errors=True)
        convert(src, dst, **quiet)
        src_before, dst_before = content_digest(src), content_digest(dst)
        out.add("attempts")
        argv = [str(int(sig)), str(k), "convert", str(src), str(dst), "--layout", "interleaved", "--force"]
        proc = subprocess.run(
            [sys.executable, "-c", child, *argv, "--no-progress"], env=env, capture_output=True, text=True
        )
        label = f"{signal.Signals(sig).name} at #{k}{' (two-step)' if two_step else ''}"
        if "Traceback" in proc.stderr:
            out.add("raw_tracebacks", f"{label}: {proc.stderr.strip().splitlines()[-1]}")
        elif proc.returncode in (0, 2, 130, -signal.SIGKILL, -signal.SIGTERM):
            out.add("clear_errors")
        else:
            out.add("crashes", f"{label}: exit {proc.returncode}")
        dst_after = content_digest(dst)
        if dst_after is None and dst_before is not None:  # killed between two renames
            from ropekit.errors import RopeError

            try:  # the next run without force: it must find the old DST back (and refuse to replace it)
                convert(src, dst, layout="interleaved", **quiet)
            except RopeError:
                pass
            if content_digest(dst) == dst_before:
                out.add("restored_by_next_run", label)
                dst_after = dst_before
        convert(src, dst, layout="interleaved", force=True, **quiet)  # the next run
        judge(out, label, src_before, content_digest(src), dst_before, dst_after, reference, hidden_siblings(dst))
    return out


def main_report(long: bool) -> None:  # pragma: no cover - run by hand
    import tempfile

    import ropekit

    from checkpoints import make_hf_dir

    src_root = Path(ropekit.__file__).parents[1]
    with tempfile.TemporaryDirectory() as d:
        sample = None if long else (lambda n: sorted({1 + (i * (n - 1)) // 11 for i in range(12)}))
        a = run_in_process(Path(d) / "in", make_hf_dir, sample)
        ks = (5, 20, 40, 60, 80) if long else (10, 40)
        ks += ("os.rename:1", "os.rename:2", "install.exchange:1")  # the install itself
        cases = [(s, k) for s in (signal.SIGTERM, signal.SIGKILL) for k in ks]
        b = run_killed(Path(d) / "out", make_hf_dir, src_root, cases)
        c = run_killed(Path(d) / "two", make_hf_dir, src_root, cases, two_step=True)
    report = {"tree": str(src_root), "in_process": a.counts, "killed": b.counts, "killed_two_step": c.counts}
    print(json.dumps(report, indent=1))
    for line in (a.failures + b.failures + c.failures)[:20]:
        print(" ", line)


if __name__ == "__main__":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).parent))
    main_report(len(sys.argv) > 1 and sys.argv[1] == "long")
