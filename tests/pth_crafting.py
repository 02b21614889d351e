"""Damaged and unusual torch.save files for the reader tests: every one is made from a real
torch.save file by editing one record, re-zipping, or dropping a record."""

import zipfile

import torch


def rezip(src, dst, edit=None, drop=(), compress=zipfile.ZIP_STORED):
    """Copy a torch.save zip record by record with Python's zipfile (no 64-byte padding),
    ``edit`` {record: bytes -> bytes}, ``drop`` records left out, ``compress`` the method."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", compress) as zo:
        for info in zi.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel in drop:
                continue
            data = zi.read(info.filename)
            if edit and rel in edit:
                data = edit[rel](data)
            zo.writestr(info.filename, data, compress_type=compress)


def torch_reads(path, mmap=False):
    """{name: tensor} as torch.load(weights_only=True) reads the file onto the CPU, or None when it
    refuses it (torch.load is the oracle: it is the reader the files were written for)."""
    try:
        sd = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception:
        return None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        return None
    return sd


def bits(t):
    """A tensor's dtype, shape and bytes: equal exactly when two tensors are the same bit for bit."""
    t = t.detach().contiguous()
    return t.dtype, tuple(t.shape), bytes(t.view(-1).view(torch.uint8).numpy()) if t.numel() else b""


def load_both_ways(path):
    """torch.load weights-only, plain and memory-mapped: the two must agree."""
    plain = torch.load(path, weights_only=True)
    mapped = torch.load(path, weights_only=True, mmap=True)
    assert list(plain) == list(mapped) and all(bits(plain[k]) == bits(mapped[k]) for k in plain)
    return plain
