"""Hostile inputs to the core API: every call returns a correct result or raises one short RopeError.

Hypothesis draws specs, shapes, dtypes, positions, flags and aliasing for RopeSpec, inv_freq,
cos_sin, apply_rope / apply_rope_qk / apply_rope_qkv and permute_qk.  Each draw also says, from the
documented rules alone, whether the input is valid and what the result must be (tests/oracle.py).
Outcomes:
  ok            valid input, correct and finite result
  clear         a RopeError subclass with a message under MAX_MESSAGE characters
  long message  a RopeError whose message is longer
  raw           any other exception (a traceback from deep inside torch or the stdlib)
  silent wrong  a result for an input that must be refused, a wrong result, or non-finite output

Default run: about 200 examples in all (fast).  ``ROPEKIT_FUZZ=long`` runs 20x more.
``ROPEKIT_FUZZ_REPORT=path`` counts outcomes into a JSON file instead of failing (to measure a
tree, e.g. an older one on PYTHONPATH).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ropekit as rk

from oracle import assert_close_to, rope_fp64

MAX_MESSAGE = 500
LONG = os.environ.get("ROPEKIT_FUZZ") == "long"
REPORT = os.environ.get("ROPEKIT_FUZZ_REPORT")
COUNTS: dict[str, Counter] = {}


def fuzz(n: int):
    return settings(
        max_examples=n * (20 if LONG else 1),
        deadline=None,
        derandomize=not LONG,
        suppress_health_check=list(HealthCheck),
    )


class Invalid(Exception):
    """The drawn input must be refused (by the documented rules)."""


def _record(test: str, outcome: str, detail: str) -> None:
    COUNTS.setdefault(test, Counter())[outcome] += 1
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump({k: dict(v) for k, v in COUNTS.items()}, f, indent=1, sort_keys=True)
    elif outcome not in ("ok", "clear"):
        pytest.fail(f"{outcome}: {detail}")


def check(test: str, call, expect) -> None:
    """Run ``call()``; ``expect()`` gives what it must return (raises Invalid when it must refuse);
    ``expect`` also receives the result to compare (returns an error string or None)."""
    try:
        result = call()
    except rk.RopeError as exc:
        msg = str(exc)
        if os.environ.get("ROPEKIT_FUZZ_VERBOSE"):
            print(test, "CLEAR:", msg[:200])
        _record(test, "clear" if len(msg) < MAX_MESSAGE else "long message", f"{len(msg)} chars: {msg[:300]}")
        return
    except Exception as exc:  # noqa: BLE001 - the point is to see which
        _record(test, "raw", f"{type(exc).__name__}: {str(exc)[:300]}")
        return
    try:
        problem = expect(result)
    except Invalid as why:
        _record(test, "silent wrong", f"accepted an input it must refuse: {why}")
        return
    except AssertionError as exc:
        _record(test, "silent wrong", str(exc)[:300])
        return
    _record(test, "ok" if problem is None else "silent wrong", problem or "")


def _finite(*tensors) -> str | None:
    for t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return "non-finite output"
    return None


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------

HOSTILE = st.sampled_from([None, -1, 0, 1.5, "8", [8], {"kind": ["x"]}, float("nan"), float("inf"), 10**30, 2**64])


def mostly(valid, hostile, n_valid: int = 10):
    """``valid`` about n_valid times in n_valid + 1, else ``hostile``: most draws reach the math
    (``st.one_of`` would pick each branch equally often)."""
    return st.integers(0, n_valid).flatmap(lambda i: hostile if i == n_valid else valid)


extreme_numbers = st.sampled_from([1e300, 1e-300, 1e308, 10**400, float("inf"), 0.0, -1.0, 1.0])
numbers = mostly(st.floats(min_value=1.0, max_value=64.0), st.one_of(extreme_numbers, HOSTILE))
ints = mostly(
    st.integers(min_value=1, max_value=8192),
    st.one_of(st.sampled_from([-3, 0, 1, 2**31, 2**53 + 1, 10**30, 2**64]), HOSTILE),
)


@st.composite
def scalings(draw):
    kind = draw(st.sampled_from(["linear", "dynamic", "yarn", "longrope", "llama3", "proportional", None, None, ["x"]]))
    if kind is None:
        return None
    d: dict = {"kind": kind}
    if kind in ("linear", "dynamic", "yarn", "llama3", "proportional"):
        d["factor"] = draw(numbers)
    if kind in ("dynamic", "yarn", "longrope", "llama3"):
        d["original_max_position_embeddings"] = draw(ints)
    if kind == "yarn":
        d.update(mscale=draw(st.one_of(st.none(), numbers)), mscale_all_dim=draw(st.one_of(st.none(), numbers)))
        d["beta_fast"], d["beta_slow"] = 32.0, 1.0
    if kind == "llama3":
        low = draw(numbers)
        d.update(
            low_freq_factor=low,
            high_freq_factor=draw(mostly(st.just(4 * low if isinstance(low, float) else 4.0), numbers)),
        )
    if kind == "longrope":
        n = draw(mostly(st.just(4), st.integers(0, 8)))
        d.update(short_factor=[draw(numbers) for _ in range(n)], long_factor=[draw(numbers) for _ in range(n)])
        d["factor"] = draw(numbers)
    return d


@st.composite
def spec_kwargs(draw):
    kw = {"head_dim": draw(mostly(st.sampled_from([8, 16, 64]), ints))}
    if draw(st.booleans()):
        kw["rotary_dim"] = draw(mostly(st.sampled_from([8]), ints))
    kw["base"] = draw(mostly(st.sampled_from([10000.0, 500000.0]), numbers))
    kw["layout"] = draw(
        mostly(st.sampled_from(["half", "interleaved", "neox", "gptj"]), st.sampled_from(["spiral", 3]))
    )
    kw["scaling"] = draw(scalings())
    if draw(st.integers(0, 3)) == 0:
        kw["attention_factor"] = draw(numbers)
    return kw


# ---------------------------------------------------------------------------------------------
# RopeSpec, inv_freq, cos_sin
# ---------------------------------------------------------------------------------------------


def _inv_plain(spec) -> torch.Tensor:
    """Inverse frequencies of an unscaled spec, independently of ropekit."""
    r = spec.rotary_dim
    return torch.pow(torch.tensor(spec.base, dtype=torch.float64), -torch.arange(0, r, 2, dtype=torch.float64) / r)


@fuzz(70)
@given(kw=spec_kwargs(), precision=st.sampled_from(["exact", "hf", "exact", "hf", "fp16"]), n=st.integers(0, 40))
def test_spec_inv_freq_cos_sin(kw, precision, n):
    def call():
        spec = rk.RopeSpec(**kw)
        inv, factor = rk.inv_freq(spec, precision=precision)
        cos, sin = rk.cos_sin(spec, n, precision=precision)
        return spec, inv, factor, cos, sin

    def expect(result):
        spec, inv, factor, cos, sin = result
        if precision not in ("exact", "hf"):
            raise Invalid(f"precision={precision!r}")
        bad = _finite(inv, cos, sin)
        if bad or not (math.isfinite(factor) and factor > 0):
            return bad or f"attention factor {factor}"
        if tuple(cos.shape) != (n, spec.n_pairs):
            return f"cos shape {tuple(cos.shape)}"
        if spec.scaling is None and precision == "exact":
            if not torch.allclose(inv, _inv_plain(spec), rtol=1e-12, atol=0):
                return "inv_freq differs from base ** (-2i / r)"
        return None

    check("spec/inv_freq/cos_sin", call, expect)


POSITIONS = st.one_of(
    st.integers(-2, 64),
    st.integers(0, 64),
    st.sampled_from([2**31, 2**40, 10**30, True, "12", 3.5, None, [1, 2, "x"], [[1], [2, 3]], range(5)]),
    st.sampled_from(["int64", "int32", "uint8", "uint16", "uint64", "bool", "float32", "complex64", "meta", "sparse"]),
)


def _position_tensor(kind: str):
    values = torch.tensor([0, 3, 7, 2])
    if kind == "meta":
        return values.to("meta")
    if kind == "sparse":
        return values.to_sparse()
    if kind == "complex64":
        return values.to(torch.complex64)
    return values.to(getattr(torch, kind))


@fuzz(40)
@given(
    positions=POSITIONS,
    dtype=mostly(
        st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
        st.sampled_from([torch.float8_e4m3fn, torch.int32, "float32"]),
    ),
    device=mostly(st.sampled_from([None, "cpu"]), st.sampled_from(["bogus", "cuda:7", "meta", 3.5])),
)
def test_cos_sin_positions_dtypes_devices(positions, dtype, device):
    spec = rk.RopeSpec(head_dim=8)
    tensor_kind = isinstance(positions, str) and positions in POSITIONS_KINDS
    pos = _position_tensor(positions) if tensor_kind else positions

    def expect(result):
        cos, sin = result
        if dtype not in (torch.float32, torch.float64, torch.bfloat16):
            raise Invalid(f"dtype={dtype!r}")
        if device not in (None, "cpu"):
            raise Invalid(f"device={device!r}")
        if tensor_kind:
            if positions in ("bool", "complex64", "meta", "sparse", "uint16", "uint64"):
                raise Invalid(f"positions of kind {positions}")
            values = torch.tensor([0, 3, 7, 2], dtype=torch.float64)
        elif isinstance(positions, bool) or not isinstance(positions, (int, range)):
            raise Invalid(f"positions={positions!r}")
        else:
            if isinstance(positions, int) and not 0 <= positions <= 4096:
                raise Invalid(f"positions={positions}")
            values = torch.arange(positions if isinstance(positions, int) else 5, dtype=torch.float64)
        angles = values[:, None] * _inv_plain(spec)
        assert_close_to(cos, angles.cos(), dtype)
        assert_close_to(sin, angles.sin(), dtype)
        return _finite(cos, sin)

    check("cos_sin", lambda: rk.cos_sin(spec, pos, dtype=dtype, device=device), expect)


POSITIONS_KINDS = ("int64", "int32", "uint8", "uint16", "uint64", "bool", "float32", "complex64", "meta", "sparse")


# ---------------------------------------------------------------------------------------------
# apply_rope / apply_rope_qk / apply_rope_qkv
# ---------------------------------------------------------------------------------------------

P = 16  # table rows
FLAGS = mostly(st.booleans(), st.sampled_from(["no", 1, None]))


@st.composite
def apply_cases(draw):
    c = dict(
        fn=draw(st.sampled_from(["apply_rope", "apply_rope_qk", "apply_rope_qkv"])),
        B=draw(st.integers(1, 2)),
        S=draw(st.integers(1, 5)),
        H=draw(st.integers(1, 3)),
        D=draw(st.sampled_from([2, 4, 8])),
        frac=draw(st.sampled_from([1.0, 0.5])),
        layout=draw(mostly(st.sampled_from(["half", "interleaved", "gptj", None]), st.just("spiral"))),
        dtype=draw(
            mostly(
                st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
                st.sampled_from([torch.int32, torch.float8_e4m3fn]),
            )
        ),
        format=draw(mostly(st.sampled_from(["bshd", "bhsd", "thd"]), st.sampled_from(["sbhd", 3]))),
        pos=draw(st.sampled_from(["none", "offset", "offsets_row", "positions", "cu_seqlens", "cu_and_positions"])),
        offset=draw(mostly(st.sampled_from([0, 3, 7]), st.sampled_from([-1, 40, "2", 2.0, True]))),
        positions_kind=draw(mostly(st.just("good"), st.sampled_from(["out_of_range", "float", "string"]))),
        cu_kind=draw(mostly(st.just("good"), st.sampled_from(["bad_end", "string"]))),
        inplace=draw(FLAGS),
        inverse=draw(FLAGS),
        shape=draw(mostly(st.sampled_from(["plain", "noncontiguous"]), st.sampled_from(["0d", "expanded"]))),
        alias=draw(st.sampled_from(["separate", "separate", "separate", "same", "overlap", "disjoint_views"])),
        seed=draw(st.integers(0, 3)),
    )
    return c


def _x(c, heads, g):
    B, S, D, fmt = c["B"], c["S"], c["D"], c["format"]
    if c["shape"] == "0d":
        return torch.tensor(1.0).to(c["dtype"])
    shape = (S * B, heads, D) if fmt == "thd" else (B, heads, S, D) if fmt == "bhsd" else (B, S, heads, D)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if c["shape"] == "expanded":
        x = x[..., :1, :].expand(*shape[:-2], heads, D)
    elif c["shape"] == "noncontiguous":
        x = torch.randn(*shape[:-1], 2 * D, generator=g, dtype=torch.float64)[..., ::2]
    return x.to(c["dtype"]) if c["dtype"] != torch.float8_e4m3fn else x.to(torch.float8_e4m3fn)


def _positions_kw(c, T):
    """kwargs for the call, and the [B, S] rows they mean (None when the form is invalid)."""
    B, S, fmt = c["B"], c["S"], c["format"]
    if fmt == "thd":
        B, S = 1, T
    form, kw = c["pos"], {}
    base = torch.arange(S)[None].expand(B, S)
    if form == "none":
        return kw, base
    if form == "offset":
        kw["offsets"] = c["offset"]
        ok = type(c["offset"]) is int and 0 <= c["offset"] and c["offset"] + S <= P
        return kw, (base + c["offset"]) if ok else None
    if form == "offsets_row":
        off = [1, 4][:B] if fmt != "thd" else [1]
        kw["offsets"] = off
        return kw, (base + torch.tensor(off)[:, None]) if fmt != "thd" else None
    if form == "positions":
        k = c["positions_kind"]
        p = torch.tensor([(3 * i + 1) % P for i in range(S)])
        kw["positions"] = {"good": p, "out_of_range": p + P, "float": p.float(), "string": "0 1 2"}[k]
        return kw, p[None].expand(B, S) if k == "good" else None
    # cu_seqlens (thd only): two sequences
    cut = T // 2
    cu = {"good": [0, cut, T], "bad_end": [0, cut, T + 3], "string": "0,2"}[c["cu_kind"]]
    kw["cu_seqlens"] = torch.tensor(cu) if c["cu_kind"] != "string" else cu
    rows = torch.cat([torch.arange(cut), torch.arange(T - cut)])[None]
    if form == "cu_and_positions":
        kw["positions"] = torch.tensor([(3 * i + 1) % P for i in range(T)])
        rows = kw["positions"][None]
    valid = fmt == "thd" and c["cu_kind"] == "good"
    return kw, rows if valid else None


def _canonical(t, fmt):
    return t[None] if fmt == "thd" else t.transpose(1, 2) if fmt == "bhsd" else t


def _expected(x, c, rows, inv, layout):
    x4 = _canonical(x, c["format"]).to(torch.float64)
    y4 = rope_fp64(x4, inv, rows, layout, inverse=c["inverse"])
    return y4[0] if c["format"] == "thd" else y4.transpose(1, 2) if c["format"] == "bhsd" else y4


def _validity(c, tensors, rows) -> str | None:
    if c["dtype"] not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        return f"dtype {c['dtype']}"
    if c["format"] not in ("bshd", "bhsd", "thd") or (c["fn"] == "apply_rope_qkv" and c["format"] == "bhsd"):
        return f"format {c['format']!r}"
    if c["layout"] == "spiral":
        return "layout 'spiral'"
    if c["shape"] == "0d":
        return "0-d tensor"
    if not isinstance(c["inplace"], bool) or not isinstance(c["inverse"], bool):
        return f"flags inplace={c['inplace']!r} inverse={c['inverse']!r}"
    if rows is None:
        return f"positions form {c['pos']} with format {c['format']!r}"
    if c["inplace"] and c["shape"] == "expanded":
        return "in place on an expanded tensor"
    if c["inplace"] and c["fn"] == "apply_rope_qk" and c["alias"] in ("same", "overlap"):
        return f"in place with q/k aliasing {c['alias']}"
    return None


@fuzz(70)
@given(c=apply_cases())
def test_apply_rope_hostile_inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    D, H = c["D"], c["H"]
    r = max(2, int(D * c["frac"]) // 2 * 2)
    spec = rk.RopeSpec(head_dim=D, rotary_dim=r)
    cos, sin = rk.cos_sin(spec, P)
    inv = torch.tensor([10000.0 ** (-(2 * i) / r) for i in range(r // 2)], dtype=torch.float64)
    layout = "interleaved" if c["layout"] in ("interleaved", "gptj") else "half"
    T = c["B"] * c["S"]
    kw, rows = _positions_kw(c, T)
    kw.update(layout=c["layout"], format=c["format"], inplace=c["inplace"], inverse=c["inverse"])

    if c["fn"] == "apply_rope":
        x = _x(c, H, g)
        originals = [x.clone()]

        def call():
            return [rk.apply_rope(x, cos, sin, **kw)]

    elif c["fn"] == "apply_rope_qk":
        buf = _x(dict(c, shape="plain" if c["shape"] == "expanded" else c["shape"]), 2 * H + 1, g)
        hd = -3 if c["format"] == "bhsd" else -2
        q = buf.narrow(hd, 0, H) if buf.dim() > 1 else buf
        k = {
            "separate": q.clone(),
            "same": q,
            "overlap": buf.narrow(hd, H - 1, H) if buf.dim() > 1 else buf,
            "disjoint_views": buf.narrow(hd, H, H) if buf.dim() > 1 else buf,
        }[c["alias"]]
        originals = [q.clone(), k.clone()]
        x = q

        def call():
            return list(rk.apply_rope_qk(q, k, cos, sin, **kw))

    else:
        n_kv = 1
        x = _x(dict(c, shape="plain" if c["shape"] == "expanded" else c["shape"]), H + 2 * n_kv, g)
        originals = [x.clone()]

        def call():
            return [rk.apply_rope_qkv(x, cos, sin, n_q_heads=H, **kw)]

    def expect(results):
        why = _validity(c, [x], rows)
        if why:
            raise Invalid(why)
        if c["fn"] == "apply_rope_qkv":
            (y,) = results
            hd = -2
            qk = originals[0].narrow(hd, 0, H + 1)
            want = torch.cat([_expected(qk, c, rows, inv, layout), originals[0].narrow(hd, H + 1, 1).double()], hd)
            assert_close_to(y, want, c["dtype"])
            return _finite(y)
        for y, orig in zip(results, originals):
            assert_close_to(y, _expected(orig, c, rows, inv, layout), c["dtype"])
        return _finite(*results)

    check(c["fn"], call, expect)


# ---------------------------------------------------------------------------------------------
# permute_qk
# ---------------------------------------------------------------------------------------------


@fuzz(20)
@given(
    n_heads=mostly(st.just(2), st.one_of(st.integers(1, 3), HOSTILE)),
    head_dim=mostly(st.just(8), st.one_of(st.sampled_from([2, 4, 6]), HOSTILE)),
    rotary_dim=mostly(st.sampled_from([None, 0, 2, 4, 8]), st.one_of(st.integers(-2, 10), HOSTILE)),
    src=mostly(st.sampled_from(["interleaved", "half", "neox"]), st.sampled_from(["rowwise", None])),
    dst=mostly(st.sampled_from(["half", "interleaved", "gptj"]), st.just(7)),
)
def test_permute_qk_hostile_inputs(n_heads, head_dim, rotary_dim, src, dst):
    rows = 2 * 8
    w = torch.arange(float(rows))[:, None].expand(rows, 3).contiguous()

    def expect(out):
        if not (isinstance(n_heads, int) and isinstance(head_dim, int) and n_heads * head_dim == rows):
            raise Invalid(f"n_heads={n_heads!r} head_dim={head_dim!r} for {rows} rows")
        r = head_dim if rotary_dim is None else rotary_dim
        if isinstance(r, bool) or not isinstance(r, int) or r < 0 or r % 2 or r > head_dim:
            raise Invalid(f"rotary_dim={rotary_dim!r}")
        if src not in ("interleaved", "half", "neox") or dst not in ("half", "interleaved", "gptj"):
            raise Invalid(f"src={src!r} dst={dst!r}")
        back = rk.permute_qk(out, n_heads, head_dim, rotary_dim, src=dst, dst=src)
        if not torch.equal(back, w) or sorted(out[:, 0].tolist()) != sorted(w[:, 0].tolist()):
            return "not a row permutation or not inverted exactly"
        return None

    check("permute_qk", lambda: rk.permute_qk(w, n_heads, head_dim, rotary_dim, src=src, dst=dst), expect)
