"""GPU readiness without a GPU: the Triton kernels compiled ahead of time for sm_80 and sm_90 (the
real compiler, down to ptxas and a cubin), failing on any compile error; the fp32 table path has
no fp64 instruction; fp fusion is set explicitly at every compile and launch.

Default run: a pairwise covering design of the variant axes (every pair of values of x dtype,
INTERLEAVED, INVERSE, COPY_TAIL, HAS_Y, FREQS appears in some compiled variant), plus the table
kernel, on both archs (each compile costs 1-5 s of CPU): compiled once per test session, in two
fresh processes at once (one per arch; the suite itself interprets, and triton decides at import
whether its own library functions are interpreter objects), shared by the tests below.  The full
matrix (every variant of ``triton_aot.variants()`` on both archs, ~260 compiles) is the ``aot_full``
group:

    ROPEKIT_AOT_FULL=1 pytest -m aot_full tests/kernels/test_kernels_aot.py -n 2
"""

import inspect
import json
import os
import subprocess

import pytest

pytest.importorskip("triton")

from ropekit.kernels import triton as triton_launcher  # noqa: E402
from ropekit.kernels import triton_aot  # noqa: E402

from covering import pairwise  # noqa: E402

ALL = triton_aot.variants()
AXES = dict(
    dtype=["fp32", "bf16", "fp16", "fp64"],
    INTERLEAVED=[False, True],
    INVERSE=[False, True],
    COPY_TAIL=[False, True],
    HAS_Y=[False, True],
    FREQS=[False, True],
)


def _covering() -> list:
    chosen = []
    for case in pairwise(AXES, seed=2):
        for v in ALL:
            meta = dict(v.constexprs)
            if v.kernel == "rope_kernel" and v.dtype == case["dtype"]:
                if all(meta[k] == case[k] for k in AXES if k != "dtype"):
                    chosen.append(v)
    return chosen + [v for v in ALL if v.kernel == "table_kernel" and v.dtype == "fp32"]


COVERING = _covering()


def _compile_all(names, tmp_path_factory) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path_factory.mktemp("triton-cache")))
    env["PYTHONPATH"] = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    procs = [triton_aot.compile_in_subprocess(names, arch, env) for arch in triton_aot.ARCHS]
    rows = {}
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=1800)
        except subprocess.TimeoutExpired:  # never leave compilers running after the test gave up
            for p in procs:
                p.kill()
                p.wait()
            raise
        assert proc.returncode == 0, err[-3000:]
        for row in json.loads(out.strip().splitlines()[-1]):
            rows[(row["variant"], row["arch"])] = row
    return rows


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _compile_all([v.name for v in COVERING], tmp_path_factory)


@pytest.mark.parametrize("arch", triton_aot.ARCHS)
@pytest.mark.parametrize("variant", COVERING, ids=[v.name for v in COVERING])
def test_variant_compiles_ahead_of_time(compiled, variant, arch):
    row = compiled[(variant.name, f"sm_{arch}")]
    assert row["ok"], row["error"]
    assert row["fp_fusion"] is triton_launcher.FP_FUSION
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
    meta = dict(variant.constexprs)
    if variant.kernel == "rope_kernel" and not meta["FREQS"] and not meta["F64"]:
        # the fp32 table path must never fall to fp64 (a stray double constant would do it)
        assert not row["fp64_ptx"] and not row["fp64_sass"], variant.name
    if meta.get("FREQS"):
        # the detector must be able to fire: the in-kernel angles are fp64 by design
        assert row["fp64_ptx"] and row["fp64_sass"], variant.name


def test_covering_design_covers_every_pair():
    names = list(AXES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            seen = set()
            for v in COVERING:
                meta = dict(v.constexprs, dtype=v.dtype)
                if v.kernel == "rope_kernel":
                    seen.add((meta[a], meta[b]))
            assert len(seen) == len(AXES[a]) * len(AXES[b]), (a, b)


def test_the_launcher_uses_the_constexprs_the_check_compiles():
    # one home for the compile-time constants: the launcher calls launch_constexprs, and every
    # launch passes the explicit fp fusion choice
    src = inspect.getsource(triton_launcher)
    assert "launch_constexprs(" in inspect.getsource(triton_launcher._launch)
    assert src.count("enable_fp_fusion=FP_FUSION") == 2  # the rotation and the table kernel
    assert triton_launcher.FP_FUSION is False


@pytest.mark.aot_full
@pytest.mark.skipif(not os.environ.get("ROPEKIT_AOT_FULL"), reason="the full matrix: set ROPEKIT_AOT_FULL=1")
def test_every_variant_compiles_ahead_of_time(tmp_path_factory):
    rows = _compile_all([v.name for v in ALL], tmp_path_factory)
    failed = [(name, arch, row["error"]) for (name, arch), row in rows.items() if not row["ok"]]
    assert len(rows) == 2 * len(ALL) and not failed, failed
