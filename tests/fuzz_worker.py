"""A reader in a process of its own, for the fuzz tests: one line in (a file path), one JSON line
out (what the reader made of the file).  A reader that crashes takes only this process down; the
test sees the pipe close and counts a crash.

    python tests/fuzz_worker.py torch      # torch.load(weights_only=True, map_location="cpu")
    python tests/fuzz_worker.py ropekit    # ropekit's PthFile (PYTHONPATH picks whose ropekit)
"""

import hashlib
import json
import sys


def digest(sd):
    import torch

    out = {}
    for name, t in sd.items():
        t = t.detach().contiguous()
        raw = bytes(t.view(-1).view(torch.uint8).numpy()) if t.numel() else b""
        out[name] = [str(t.dtype), list(t.shape), hashlib.sha256(raw).hexdigest()]
    return out


def read_torch(path):
    import torch

    try:
        sd = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        return {"verdict": "refused", "why": type(exc).__name__}
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        return {"verdict": "refused", "why": "not a flat dict of tensors"}
    return {"verdict": "read", "tensors": digest(sd)}


def read_ropekit(path):
    from ropekit.errors import RopeCheckpointError

    try:
        try:
            from ropekit.conversion.formats.pth_file import PthFile
        except ImportError:  # an older tree: PthFile lived in meta_dir
            from ropekit.conversion.formats.meta_dir import PthFile
        f = PthFile(path)
        return {"verdict": "read", "tensors": digest({n: f.tensor(n) for n in f.names()})}
    except RopeCheckpointError as exc:
        return {"verdict": "refused", "why": str(exc), "length": len(str(exc))}
    except Exception as exc:  # noqa: BLE001 (counted: a raw traceback)
        return {"verdict": "raw", "why": f"{type(exc).__name__}: {str(exc)[:200]}"}


def main():
    reader = {"torch": read_torch, "ropekit": read_ropekit}[sys.argv[1]]
    for line in sys.stdin:
        print(json.dumps(reader(line.rstrip("\n"))), flush=True)


if __name__ == "__main__":
    main()
