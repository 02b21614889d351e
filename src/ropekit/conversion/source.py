"""What a conversion may read: regular files inside SRC, named by plain relative paths.

A checkpoint directory is input, and input can point anywhere: an index whose ``weight_map`` says
``../other/model.safetensors`` or ``/etc/passwd``, a ``notes.txt`` that is a symbolic link to
``/etc/hostname``, a FIFO that blocks the first ``open``.  ropekit reads none of them:

- every name SRC's own files give (shards in an index) must be a relative path that stays inside
  SRC once resolved (no ``..``, no absolute path, no link on the way);
- symbolic links inside SRC are refused, not followed and not reproduced as links: following one
  copies a file from outside SRC into DST, and a reproduced link makes DST depend on a path outside
  it (a relative link breaks as soon as DST lives elsewhere).  SRC itself may be a link: the user
  named it;
- FIFOs, sockets and device files are refused before anything opens them (an open would block).

Hidden names (``.cache/``, ``.gitattributes``) are neither read nor copied, so they are not checked.

>>> import os, tempfile; from pathlib import Path
>>> d = Path(tempfile.mkdtemp()); os.symlink("/etc/hostname", d / "notes.txt")
>>> try:
...     check_tree(d)
... except Exception as exc:
...     print(str(exc).split(";")[0])
src: notes.txt is a symbolic link (-> /etc/hostname)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from ..errors import RopeCheckpointError

__all__ = ["check_tree", "check_member", "kind_of"]

_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def kind_of(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _refuse(root: Path, rel: str, st: os.stat_result) -> RopeCheckpointError:
    what = kind_of(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        try:
            what += f" (-> {os.readlink(root / rel)})"
        except OSError:
            pass
    return RopeCheckpointError(
        f"src: {rel} is {what}; convert reads only regular files inside src (copy the real file in its place)"
    )


def check_tree(root: Path) -> None:
    """Refuse links and special files anywhere under a SRC directory (or a SRC that is no
    regular file).  Symlink loops are links too: refused without being resolved."""
    root = Path(root)
    try:
        st = os.stat(root)  # the name the user gave may be a link: follow that one
    except OSError as exc:
        raise RopeCheckpointError(f"src={str(root)!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        if not stat.S_ISREG(st.st_mode):
            raise RopeCheckpointError(f"src={str(root)!r} is {kind_of(st.st_mode)}; convert reads regular files")
        return

    def onerror(exc: OSError):
        raise RopeCheckpointError(f"src: cannot list {exc.filename}: {exc.strerror}")

    for dirpath, dirs, files in os.walk(root, onerror=onerror):
        for name in list(dirs) + files:
            if name.startswith("."):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            st = os.lstat(os.path.join(dirpath, name))
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise _refuse(root, rel, st)
        dirs[:] = [d for d in dirs if not d.startswith(".")]


def check_member(root: Path, name, what: str) -> Path:
    """``root / name`` for a file name read from SRC's own files (``what`` says where), after
    checking that it is a plain relative path to a regular file inside ``root``.

    >>> check_member(Path("/ckpt"), "../src/model.safetensors", "weight_map")
    Traceback (most recent call last):
    ...
    ropekit.errors.RopeCheckpointError: weight_map names '../src/model.safetensors':
        a file must be a relative path inside src without '..'
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise RopeCheckpointError(f"{what} names {name!r}: a file name must be a non-empty string")
    parts = PurePosixPath(name).parts
    if os.path.isabs(name) or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise RopeCheckpointError(f"{what} names {name!r}: a file must be a relative path inside src without '..'")
    path = Path(root, *parts)
    for i in range(1, len(parts) + 1):  # no link anywhere on the way (check_tree skipped hidden names)
        sub = Path(root, *parts[:i])
        try:
            st = os.lstat(sub)
        except FileNotFoundError:
            return path  # the caller says what is missing
        except OSError as exc:
            raise RopeCheckpointError(f"{what} names {name!r}: {exc.strerror}") from None
        last = i == len(parts)
        if (
            stat.S_ISLNK(st.st_mode)
            or (last and not stat.S_ISREG(st.st_mode))
            or not (last or stat.S_ISDIR(st.st_mode))
        ):
            raise _refuse(Path(root), os.path.join(*parts[:i]), st)
    return path
