"""Atomic output: every conversion is written into a hidden sibling of DST and installed at the end.

Names, next to DST (``PID``: the writing process, so a later run can tell a dead writer's leftovers
from a live one's):

- ``.DST.ropekit-partial-PID``: the output being written.  A failure or an interrupt removes it; a
  process killed with SIGKILL cannot, so the next run for the same DST does (``clean_stale``).
- ``.DST.ropekit-old-PID``: only where the file system cannot swap two names in one step.  The old
  DST waits there between the two renames; if the writer dies in between, the next run puts it
  back (no DST is never the end state of a replacement).

Replacing an existing DST (``force``) swaps the two names with ``renameat2(RENAME_EXCHANGE)``
(Linux >= 3.15, ext4 / xfs / btrfs / tmpfs ...): at every instant DST is either the complete old
output or the complete new one.  Elsewhere, a file replaces a file with one ``rename`` (atomic by
POSIX), and a directory takes the recoverable two-step above.  SIGINT / SIGTERM / SIGHUP arriving
during a rename or a clean-up are held back and delivered right after it (``deferred_signals``),
so a second Ctrl-C cannot cut a clean-up short.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import shutil
import signal
import threading
from pathlib import Path

from ..errors import RopeCheckpointError

__all__ = ["Staging", "check_paths", "check_free", "clean_stale", "deferred_signals", "exchange", "PARTIAL", "OLD"]

PARTIAL = ".ropekit-partial-"
OLD = ".ropekit-old-"
_RENAME_EXCHANGE = 2  # <linux/fs.h>
_AT_FDCWD = -100
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def check_paths(src: Path, dst: Path) -> None:
    """Refuse a DST that overlaps SRC or has no parent directory."""
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise RopeCheckpointError(f"dst={str(dst)!r} is inside src={str(src)!r}; write the conversion next to it")
    if dst_r in src_r.parents:
        raise RopeCheckpointError(f"src={str(src)!r} is inside dst={str(dst)!r}; replacing dst would delete src")
    if not dst_r.parent.is_dir():
        raise RopeCheckpointError(f"dst={str(dst)!r}: its parent directory does not exist")


def check_free(dst: Path, force: bool) -> None:
    """Refuse an existing DST without ``force`` (after ``clean_stale`` may have restored one)."""
    if (dst.exists() or dst.is_symlink()) and not force:
        raise RopeCheckpointError(f"dst={str(dst)!r} exists; pass force=True to replace it")


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT / SIGTERM / SIGHUP back for the duration (main thread only: elsewhere Python
    cannot change handlers, and the code inside stays correct when interrupted anyway, just less
    tidy).  The first signal held is re-raised through its own handler on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for sig in _SIGNALS:
        if signal.getsignal(sig) is None:  # a handler installed outside Python: cannot be put back
            continue
        previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


def remove(path: Path) -> None:
    """Remove a file, link or tree, not interruptible by a signal (see ``deferred_signals``)."""
    with deferred_signals():
        if path.is_symlink() or path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        elif path.exists():
            shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _renameat2():
    """libc's renameat2, or None (not Linux, or a libc older than glibc 2.28)."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step.  False where the system or file system cannot
    (then nothing changed); other errors raise OSError."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False  # the file system has no exchange (EINVAL), or a seccomp filter says no (EPERM)
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _siblings(dst: Path, marker: str):
    """(path, pid) of every sibling of DST with ``marker`` whose writer is no longer running."""
    for p in dst.parent.glob(f".{dst.name}{marker}*"):
        pid = p.name.rsplit("-", 1)[-1]
        # this process's own siblings are stale too: its runs for one DST are one after another
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            yield p


def clean_stale(dst: Path) -> list[str]:
    """Finish what a killed run for DST left: put back an old DST caught between two renames,
    remove dead writers' partial outputs and old copies.  Returns what it did, for the log."""
    done = []
    with deferred_signals():
        for old in sorted(_siblings(dst, OLD)):
            if not (dst.exists() or dst.is_symlink()):
                os.rename(old, dst)  # the run died between its two renames: DST comes back
                done.append(f"restored {dst} from {old.name}, left by an interrupted replacement")
            else:
                remove(old)
                done.append(f"removed {old.name}, left by an interrupted replacement")
        for partial in _siblings(dst, PARTIAL):
            remove(partial)
            done.append(f"removed {partial.name}, left by an interrupted conversion")
    return done


class Staging:
    """The hidden sibling a conversion writes into, and its installation as DST.

    >>> import tempfile; from pathlib import Path
    >>> d = Path(tempfile.mkdtemp()); dst = d / "out"
    >>> with Staging(dst, is_file=False) as tmp:
    ...     _ = (tmp / "a.txt").write_text("new")
    ...     Staging.install(tmp, dst, is_file=False)
    >>> sorted(p.name for p in d.iterdir()), (dst / "a.txt").read_text()
    (['out'], 'new')
    """

    def __init__(self, dst: Path, is_file: bool):
        self.dst, self.is_file = dst, is_file
        self.tmp = dst.parent / f".{dst.name}{PARTIAL}{os.getpid()}"

    def __enter__(self) -> Path:
        remove(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        remove(self.tmp)  # after install it holds at most the replaced DST
        return False

    @staticmethod
    def install(tmp: Path, dst: Path, is_file: bool) -> None:
        """Make the staged output DST (atomically; see the module docstring)."""
        staged = tmp / dst.name if is_file else tmp
        with deferred_signals():
            if not (dst.exists() or dst.is_symlink()):
                os.rename(staged, dst)
                return
            if exchange(staged, dst):  # staged now names the old DST, removed with tmp
                return
            if is_file and not dst.is_dir():
                os.replace(staged, dst)  # a file over a file is one atomic rename everywhere
                return
            old = dst.parent / f".{dst.name}{OLD}{os.getpid()}"
            os.rename(dst, old)
            try:
                os.rename(staged, dst)
            except BaseException:
                os.rename(old, dst)
                raise
            remove(old)
