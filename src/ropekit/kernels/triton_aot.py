"""Ahead-of-time compilation of every Triton kernel variant ropekit can launch, for a GPU that is
not here: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the whole
pipeline (TTIR, TTGIR, LLVM, PTX, and ptxas to a cubin; ptxas ships in the triton wheel) on a
machine without a GPU.  The tests compile the variants so that a kernel the interpreter runs but
the real compiler rejects never reaches a user; ``benchmarks/triton_report.py`` lists each
variant's registers, spills, shared memory and fp64 instructions.

A variant is one distinct set of compile-time constants (``triton.launch_constexprs``) times the
pointer dtypes: x (fp32, bf16, fp16, fp64) and the table (fp32 rows, or the in-kernel angles'
int64 fixed-point turns).  Integer arguments are compiled unspecialized (i32), the form Triton
falls back to for values it cannot specialize.

>>> from ropekit.kernels.triton_aot import variants
>>> len(variants()) >= 128
True
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

__all__ = ["Variant", "variants", "compile_variant", "resources", "ARCHS", "HEAD_DIM", "ROTARY_PARTIAL"]

#: sm_80 (A100) and sm_90 (H100/H200)
ARCHS = (80, 90)
#: the representative shape: Llama heads (head_dim 128, 32 heads); partial rotary rotates 64 dims
HEAD_DIM, HEADS, ROTARY_PARTIAL = 128, 32, 64
_X_DTYPES = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16", "fp64": "*fp64"}


@dataclass(frozen=True)
class Variant:
    kernel: str  # "rope_kernel" or "table_kernel"
    dtype: str  # x's dtype (rope) or the tables' dtype (table kernel)
    constexprs: tuple  # sorted (name, value) pairs

    @property
    def name(self) -> str:
        flags = [k.lower() for k, v in self.constexprs if v is True]
        blocks = [f"{k[6:].lower()}{v}" for k, v in self.constexprs if k.startswith("BLOCK")]
        return "-".join([self.kernel.strip("_").replace("_kernel", ""), self.dtype, *flags, *blocks])


def variants() -> list[Variant]:
    """Every launchable combination: INTERLEAVED x INVERSE x COPY_TAIL x HAS_Y x FREQS x x's dtype
    (F64 follows the dtype) for the rotation kernel, and the table kernel per output dtype."""
    from .triton import TABLE_BLOCK_N, launch_constexprs

    out = []
    for dtype, il, inv, tail, has_y, freqs in itertools.product(_X_DTYPES, *[(False, True)] * 5):
        R = (ROTARY_PARTIAL if tail else HEAD_DIM) // 2
        meta = launch_constexprs(
            4096,
            HEADS,
            R,
            HEAD_DIM - 2 * R,
            interleaved=il,
            inverse=inv,
            copy_tail=tail,
            has_y=has_y,
            freqs=freqs,
            f64=dtype == "fp64",
        )
        out.append(Variant("rope_kernel", dtype, tuple(sorted(meta.items()))))
    for dtype in ("fp32", "bf16", "fp16", "fp64"):
        out.append(Variant("table_kernel", dtype, (("BLOCK_N", TABLE_BLOCK_N), ("BLOCK_R", HEAD_DIM // 2))))
    return out


def _signature(fn, v: Variant) -> dict:
    meta = dict(v.constexprs)
    ptr = _X_DTYPES[v.dtype]
    sig = {}
    for name in fn.arg_names:
        if name in meta:
            sig[name] = "constexpr"
        elif v.kernel == "table_kernel":
            sig[name] = {"fix_ptr": "*i64", "pos_ptr": "*i64", "cos_ptr": ptr, "sin_ptr": ptr}.get(name, "i32")
            if name.startswith("factor"):
                sig[name] = "fp32"
        elif name in ("x_ptr", "xo_ptr", "y_ptr", "yo_ptr"):
            sig[name] = ptr
        elif name in ("cos_ptr", "sin_ptr"):
            sig[name] = "*i64" if meta["FREQS"] else "*fp32"
        elif name == "pos_ptr":
            sig[name] = "*i64"
        elif name.startswith("factor"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_variant(v: Variant, arch: int):
    """The compiled kernel (PTX and cubin in ``.asm``) for ``sm_<arch>``; raises on any compile error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_code
    from .triton import FP_FUSION

    if knobs_interpreting():
        raise RuntimeError(
            "ahead-of-time compilation needs a process without TRITON_INTERPRET (triton's own "
            "library functions are interpreter objects there): use compile_in_subprocess"
        )
    fn = getattr(triton_code, v.kernel)
    src = ASTSource(fn, signature=_signature(fn, v), constexprs=dict(v.constexprs))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"enable_fp_fusion": FP_FUSION})


_PTX_F64 = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z]+(?:\.[a-z0-9]+)*\.f64\b", re.M)
_SASS_F64 = re.compile(r"\b(?:DADD|DMUL|DFMA|DSETP|DMNMX|DRCP|F2F\.F64\.\w+|F2F\.\w+\.F64|I2F\.F64|F2I\.\w*F64)\b")


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resources(compiled, arch: int) -> dict:
    """Registers, spill bytes and shared memory (from ``ptxas -v`` on the variant's PTX), and
    whether fp64 arithmetic appears in its PTX and in its SASS (``cuobjdump -sass``)."""
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path, cubin_path = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx_path, "w") as f:
            f.write(ptx)
        with open(cubin_path, "wb") as f:
            f.write(cubin)
        arch_flag = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton itself uses for arch

        ptxas = subprocess.run(
            [get_ptxas(arch).path, "-v", f"-arch={arch_flag}", ptx_path, "-o", os.path.join(tmp, "v.cubin")],
            capture_output=True,
            text=True,
        )
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin_path], capture_output=True, text=True).stdout
    info = ptxas.stderr + ptxas.stdout

    def grab(pattern: str) -> int:
        m = re.search(pattern, info)
        return int(m.group(1)) if m else -1

    return dict(
        registers=grab(r"Used (\d+) registers"),
        spill_stores=grab(r"(\d+) bytes spill stores"),
        spill_loads=grab(r"(\d+) bytes spill loads"),
        shared_bytes=int(compiled.metadata.shared),
        fp64_ptx=bool(_PTX_F64.search(ptx)),
        fp64_sass=bool(_SASS_F64.search(sass)),
        sass_lines=len(sass.splitlines()),
    )


def knobs_interpreting() -> bool:
    from triton import knobs

    return bool(knobs.runtime.interpret)


def check(names, arch: int, with_resources: bool = True) -> list[dict]:
    """Compile the named variants for ``sm_<arch>``: one dict per variant (``ok``, ``error``, and the
    resources when it compiled)."""
    by_name = {v.name: v for v in variants()}
    rows = []
    for name in names:
        row = dict(variant=name, arch=f"sm_{arch}", ok=False, error="")
        try:
            compiled = compile_variant(by_name[name], arch)
            row.update(ok=True, fp_fusion=bool(compiled.metadata.enable_fp_fusion))
            if with_resources:
                row.update(resources(compiled, arch))
        except Exception as exc:  # reported per variant: one failure must not hide the others
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        rows.append(row)
    return rows


def compile_in_subprocess(names, arch: int, env: dict | None = None, python: str | None = None):
    """``check`` in a fresh process without TRITON_INTERPRET; returns a started ``Popen`` whose
    stdout is the JSON list of rows (so several archs compile at once, one per core)."""
    import sys

    env = dict(os.environ if env is None else env)
    env.pop("TRITON_INTERPRET", None)
    code = (
        "import json, sys; from ropekit.kernels.triton_aot import check; "
        "print(json.dumps(check(sys.argv[2:], int(sys.argv[1]))))"
    )
    return subprocess.Popen(
        [python or sys.executable, "-c", code, str(arch), *names],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
