"""Fuzzing checkpoint bytes: valid safetensors files and torch.save zips, mutated (bit flips,
truncation, header JSON edits, pickle opcode edits, zip local-header edits, records rewritten),
read by ropekit and by the reference reader of the format on the same bytes.

For every mutant ropekit either reads exactly the tensors the reference reads, or raises one
RopeCheckpointError with a bounded message: never another exception, never a crash, never other
tensors, never a file the reference refuses.  .pth files are read in worker processes
(tests/fuzz_worker.py), so a reader that crashes is counted, not fatal.

Bounded by default (a few seconds); ``ROPEKIT_FUZZ=long`` runs 40x more examples, randomized.
``ROPEKIT_FUZZ_COUNT=file.json`` only counts (attempts / clear errors / raw tracebacks / silent
wrong results / crashes) instead of asserting, to measure a tree (``ROPEKIT_SRC`` names its src/
for the workers; ``-o pythonpath="SRC tests"`` for the in-process safetensors side); ``ROPEKIT_FUZZ_SAVE=dir`` keeps
the bytes of each failing example.
"""

import collections
import io
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save

from ropekit.conversion.formats.safetensors_io import SafetensorsFile
from ropekit.errors import RopeCheckpointError

from fuzz_worker import read_ropekit
from pth_crafting import bits

ROOT = Path(__file__).resolve().parents[2]
LONG = os.environ.get("ROPEKIT_FUZZ") == "long"
COUNT_ONLY = os.environ.get("ROPEKIT_FUZZ_COUNT")
FUZZ = settings(
    max_examples=2000 if LONG else 50,
    deadline=None,
    derandomize=not LONG,
    suppress_health_check=list(HealthCheck),
)
MAX_MESSAGE = 600
COUNTS: dict = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if COUNT_ONLY:
        with open(COUNT_ONLY, "w") as f:
            json.dump(COUNTS, f, indent=1, sort_keys=True)


def judge(fmt: str, reference, ropekit, data: bytes) -> None:
    """Count one attempt; fail (unless only counting) on anything but agreement or a clear refusal.
    ``reference``: {name: bits} or None (refused); ``ropekit``: ("read", {name: bits}) |
    ("refused", message) | ("raw", what) | ("crash", what)."""
    kind, value = ropekit
    c = COUNTS[fmt]
    c["attempts"] += 1
    if kind == "read":
        verdict = "agree" if value == reference else "silent_wrong"
        c["reference_refused_too" if reference is None else "read_same"] += verdict == "agree"
    elif kind == "refused":
        verdict = "clear_error" if len(value) <= MAX_MESSAGE and "\n" not in value else "unbounded_error"
    else:
        verdict = kind  # raw traceback or crash
    c[verdict] += 1
    keep = os.environ.get("ROPEKIT_FUZZ_SAVE")  # a folder for the bytes of every failing example
    if keep and verdict not in ("agree", "clear_error"):
        Path(keep, f"{fmt}-{verdict}-{c['attempts']}.bin").write_bytes(data)
    if kind == "refused" and reference is not None:
        c["refused_what_reference_reads"] += 1
    if not COUNT_ONLY:
        assert verdict in ("agree", "clear_error"), (verdict, value if kind != "read" else "", reference is None)


# ---------------------------------------------------------------------------------------------
# safetensors (reference: the safetensors library, in process: it is Rust and does not crash)
# ---------------------------------------------------------------------------------------------

g = torch.Generator().manual_seed(0)
ST_BASE = save(
    {"a": torch.randn(2, 3, generator=g), "b": torch.randn(4, generator=g).bfloat16(), "c": torch.arange(3)},
    metadata={"format": "pt"},
)
HOSTILE = [-1, 0, 1, 2, 3, 6, 2**63, 2**64, 2**64 + 1, 1.5, 2.0, True, False, None, "2", [], {}, [1, 2], [0, 24]]
HOSTILE += ["F32", "BF16", "I64", "U8", "F8_E8M0", "C64", "F4", "xx"]


@st.composite
def header_edit(draw):
    """The base file with one JSON edit of its header (the length prefix rewritten, or kept)."""
    n = int.from_bytes(ST_BASE[:8], "little")
    header = json.loads(ST_BASE[8 : 8 + n])
    target = draw(st.sampled_from(sorted(header)))
    entry = header[target]
    if target == "__metadata__":
        if draw(st.booleans()):
            header[target] = draw(st.sampled_from(HOSTILE))
        else:
            entry[draw(st.sampled_from(["format", "other"]))] = draw(st.sampled_from(HOSTILE))
    else:
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        value = draw(st.sampled_from(HOSTILE))
        if (
            field in ("shape", "data_offsets")
            and isinstance(entry[field], list)
            and entry[field]
            and draw(st.booleans())
        ):
            entry[field][draw(st.integers(0, len(entry[field]) - 1))] = value
        elif draw(st.integers(0, 5)) == 0:
            del entry[field if field != "extra" else "dtype"]
        else:
            entry[field] = value
    raw = json.dumps(header).encode()
    if draw(st.booleans()):  # a name given twice, the second with the first entry's text
        first = json.dumps({"a": header.get("a")})[1:-1].encode()
        raw = raw[:-1] + b"," + first + b"}"
    prefix = struct.pack("<Q", len(raw)) if draw(st.integers(0, 4)) else ST_BASE[:8]
    return prefix + raw + ST_BASE[8 + n :]


@st.composite
def text_edit(draw):
    """A few characters of the header JSON replaced (numbers, quotes, escapes, brackets)."""
    n = int.from_bytes(ST_BASE[:8], "little")
    raw = bytearray(ST_BASE[8 : 8 + n])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, n - 1))
        piece = draw(
            st.sampled_from(
                [
                    b"-",
                    b"0",
                    b"9",
                    b".",
                    b"e",
                    b'"',
                    b"\\",
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b",",
                    b" ",
                    b"\x00",
                    b"\xff",
                    b"NaN",
                    b"\\ud800",
                    b"1e400",
                ]
            )
        )
        raw[at : at + draw(st.integers(0, 2))] = piece
    return struct.pack("<Q", len(raw)) + bytes(raw) + ST_BASE[8 + n :]


@st.composite
def bit_flips(draw, base):
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, min(len(data) - 1, draw(st.sampled_from([200, 400, len(data) - 1])))))
        data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def truncations(base):
    return st.integers(0, len(base) - 1).map(lambda n: base[:n])


def appended(base):
    return st.binary(min_size=1, max_size=16).map(lambda tail: base + tail)


def st_reference(path):
    try:
        with safe_open(str(path), "pt") as f:
            return {k: bits(f.get_tensor(k)) for k in f.keys()}
    except Exception:
        return None


def st_ropekit(path):
    try:
        f = SafetensorsFile(path)
        return "read", {n: bits(f.tensor(n)) for n in f.names()}
    except RopeCheckpointError as exc:
        return "refused", str(exc)
    except Exception as exc:  # counted: a raw traceback
        return "raw", f"{type(exc).__name__}: {exc}"[:300]


ST_MUTANTS = st.one_of(header_edit(), text_edit(), bit_flips(ST_BASE), truncations(ST_BASE), appended(ST_BASE))


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="ropekit-fuzz-") as d:
        yield Path(d)


@FUZZ
@given(data=ST_MUTANTS)
def test_fuzz_safetensors_bytes(scratch, data):
    path = scratch / "m.safetensors"
    path.write_bytes(data)
    judge("safetensors", st_reference(path), st_ropekit(path), data)


# ---------------------------------------------------------------------------------------------
# .pth (reference: torch.load(weights_only=True) on the CPU), both readers in worker processes
# ---------------------------------------------------------------------------------------------


class Worker:
    """A reader process (tests/fuzz_worker.py) asked one path at a time; restarted after a crash."""

    def __init__(self, kind):
        self.kind, self.proc = kind, None

    def start(self):
        src = os.environ.get("ROPEKIT_SRC", str(ROOT / "src"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(ROOT / "tests")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fuzz_worker.py"), self.kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, path, timeout=120):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            self.proc.wait()
            what = f"exit {self.proc.returncode}" if ready else f"no answer in {timeout} s"
            self.proc = None
            return {"verdict": "crash", "why": what}
        return json.loads(line)

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def workers():
    # ropekit's reader runs here (it hands nothing to torch.load, nothing that can crash), unless
    # another tree is measured (ROPEKIT_SRC): that one may crash, so it gets a worker too
    pair = {"torch": Worker("torch"), "ropekit": Worker("ropekit") if os.environ.get("ROPEKIT_SRC") else None}
    for w in pair.values():
        if w is not None:
            w.start()  # both import torch at once
    yield pair
    for w in pair.values():
        if w is not None:
            w.close()


def _pth_bases():
    base = torch.randn(4, 6, generator=g)
    sd = {
        "w": torch.randn(3, 4, generator=g),
        "b": torch.randn(5, generator=g).bfloat16(),
        "v": base[1:3],
        "p": torch.nn.Parameter(torch.randn(2, generator=g)),
        "u": torch.arange(3).to(torch.uint16),
    }
    buf = io.BytesIO()
    torch.save(sd, buf)
    return [buf.getvalue()]


PTH_BASES = _pth_bases()


def rezip_bytes(data, edit=None, drop=(), compress=zipfile.ZIP_STORED):
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zi, zipfile.ZipFile(out, "w", compress) as zo:
        for info in zi.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel not in drop:
                body = zi.read(info.filename)
                zo.writestr(info.filename, edit(rel, body) if edit else body, compress_type=compress)
    return out.getvalue()


STORAGES = ["FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "ByteStorage"]
STORAGES += ["BoolStorage", "ComplexDoubleStorage", "UntypedStorage", "QInt8Storage", "Nope"]


@st.composite
def pickle_edit(draw):
    base = draw(st.sampled_from(PTH_BASES))
    how = draw(st.sampled_from(["byte", "int", "class", "truncate"]))
    at_frac = draw(st.floats(0, 1, allow_nan=False))
    value = draw(st.integers(0, 255))
    new_class = draw(st.sampled_from(STORAGES))

    def edit(rel, body):
        if rel != "data.pkl":
            return body
        body = bytearray(body)
        if how == "byte":
            body[int(at_frac * (len(body) - 1))] = value
        elif how == "int":  # the argument of one BININT1 (sizes, offsets, strides, storage sizes)
            spots = [i for i in range(len(body) - 1) if body[i] == ord("K")]
            body[spots[int(at_frac * (len(spots) - 1))] + 1] = value
        elif how == "class":
            for old in STORAGES:
                if old.encode() in body:
                    return bytes(body).replace(old.encode(), new_class.encode(), 1)
        else:
            del body[int(at_frac * len(body)) :]
        return bytes(body)

    return rezip_bytes(base, edit)


@st.composite
def record_edit(draw):
    base = draw(st.sampled_from(PTH_BASES))
    how = draw(st.sampled_from(["byteorder", "version", "drop", "deflate"]))
    if how == "deflate":
        return rezip_bytes(base, compress=zipfile.ZIP_DEFLATED)
    if how == "drop":
        names = [i.filename.split("/", 1)[1] for i in zipfile.ZipFile(io.BytesIO(base)).infolist()]
        return rezip_bytes(base, drop=(draw(st.sampled_from(names)),))
    value = draw(st.sampled_from([b"big", b"little", b"", b"LITTLE", b"0", b"3", b"10", b"11", b"-1", b"x"]))
    return rezip_bytes(base, lambda rel, body: value if rel == how else body)


@st.composite
def local_header_edit(draw):
    """One field of one zip local header overwritten in place (method, sizes, name/extra lengths)."""
    data = bytearray(draw(st.sampled_from(PTH_BASES)))
    spots = [i for i in range(len(data) - 4) if data[i : i + 4] == b"PK\x03\x04"]
    at = draw(st.sampled_from(spots))
    field, size = draw(st.sampled_from([(8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]))
    value = draw(st.one_of(st.integers(0, 2 ** (8 * size) - 1), st.sampled_from([0, 1, 8, 12, 64, 99])))
    data[at + field : at + field + size] = value.to_bytes(size, "little")
    return bytes(data)


PTH_MUTANTS = st.one_of(
    pickle_edit(),
    record_edit(),
    local_header_edit(),
    st.sampled_from(PTH_BASES).flatmap(bit_flips),
    st.sampled_from(PTH_BASES).flatmap(truncations),
)


@FUZZ
@given(data=PTH_MUTANTS)
def test_fuzz_pth_bytes(scratch, workers, data):
    path = scratch / "m.pth"
    path.write_bytes(data)
    ref = workers["torch"].ask(path)
    got = workers["ropekit"].ask(path) if workers["ropekit"] else read_ropekit(str(path))
    reference = ref["tensors"] if ref["verdict"] == "read" else None
    if got["verdict"] == "read":
        result = ("read", got["tensors"])
    elif got["verdict"] == "refused":
        result = ("refused", got["why"])
    else:
        result = (got["verdict"], got["why"])
    if ref["verdict"] == "crash":
        COUNTS["pth"]["reference_crashed"] += 1
    judge("pth", reference, result, data)
