"""The lean eager path (``kernels.eager`` behind ``apply``'s auto dispatch for CPU calls without
gradients): against the fp64 oracle over the covering design, bit for bit against the reference
through the op, q+k, the clear errors it must keep, and what must stay off it (autograd,
torch.compile).  The native kernel that takes over once loaded: test_kernels_native.py."""

import pytest
import torch

import ropekit as rk
import ropekit.fastpath as fastpath_mod
from ropekit.errors import RopeArgumentError, RopePositionError, RopeShapeError

from covering import case_id
from kernel_cases import CASES, P, _make_case, check_case
from oracle import assert_close_to, rope_fp64

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.fixture(autouse=True)
def native_off(monkeypatch):
    """This file tests the lean eager path, which serves CPU calls until the native kernel is
    loaded (and where it cannot be built): keep the native kernel out of the way."""
    from ropekit.kernels import cpu

    monkeypatch.setattr(cpu, "ready", lambda wait=False: False)


@pytest.fixture
def lean_calls(monkeypatch):
    """Counts calls of the lean kernel (to prove a test runs the path it means to)."""
    calls = []
    real = fastpath_mod.rotate_lean

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(fastpath_mod, "rotate_lean", spy)
    return calls


def _eligible(case) -> bool:
    # thd without explicit positions carries cu_seqlens; per-row offset tensors: general path
    if case["pos"] in ("positions_1d", "positions_2d"):
        return True
    return case["format"] != "thd" and case["pos"] in ("none", "offset_int")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_auto_matches_oracle(case, lean_calls):
    check_case(case, None)
    assert bool(lean_calls) == _eligible(case)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_lean_is_bit_identical_to_reference_op(case, lean_calls):
    D, layout = case["head_dim"], case["layout"]
    spec = rk.RopeSpec(head_dim=D, rotary_dim=int(D * case["frac"]) // 2 * 2, layout=layout)
    cos, sin = rk.cos_sin(spec, P)
    _, x64, kw, _ = _make_case(case, seed=3)
    kw = dict(kw, layout=layout, format=case["format"], inverse=case["inverse"])
    for dtype in DTYPES:
        x = x64.to(dtype)
        k = x[..., :1, :] if case["format"] == "thd" else (x[:, :1] if case["format"] == "bhsd" else x[:, :, :1])
        k = (k * 0.5).contiguous()  # one kv head (GQA)
        want = rk.apply_rope_qk(x, k, cos, sin, backend="reference", **kw)
        if case["inplace"]:
            got = (x.clone(), k.clone())
            assert rk.apply_rope_qk(*got, cos, sin, inplace=True, **kw)[0] is got[0]
        else:
            got = rk.apply_rope_qk(x, k, cos, sin, **kw)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and torch.equal(g, w), dtype
        assert torch.equal(rk.apply_rope(x, cos, sin, **kw), want[0])
    assert bool(lean_calls) == _eligible(case)


def test_int32_positions_and_table_dtypes(lean_calls):
    spec = rk.RopeSpec(head_dim=16, rotary_dim=8)
    x = torch.randn(2, 4, 3, 16, dtype=torch.float64)
    pos = torch.tensor([[5, 0, 63, 7], [1, 2, 3, 4]])
    inv, _ = rk.inv_freq(spec)
    for table_dtype in (torch.float32, torch.float64, torch.bfloat16):
        cos, sin = rk.cos_sin(spec, P, dtype=table_dtype)
        for dtype in (torch.float32, torch.bfloat16):
            y = rk.apply_rope(x.to(dtype), cos, sin, positions=pos.to(torch.int32))
            assert torch.equal(y, rk.apply_rope(x.to(dtype), cos, sin, positions=pos, backend="reference"))
            if table_dtype != torch.bfloat16:
                assert_close_to(y, rope_fp64(x.to(dtype), inv, pos, "half"), dtype)
    assert len(lean_calls) == 6


def test_decode_shape_each_sequence_at_its_own_position(lean_calls):
    spec = rk.RopeSpec(head_dim=64, base=500000.0)
    cos, sin = rk.cos_sin(spec, 2200)
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(8, 1, 4, 64, generator=g), torch.randn(8, 1, 2, 64, generator=g)
    pos = (1000 + 37 * torch.arange(8))[:, None]
    yq, yk = rk.apply_rope_qk(q, k, cos, sin, positions=pos)
    inv, _ = rk.inv_freq(spec)
    assert_close_to(yq, rope_fp64(q, inv, pos, "half"))
    assert_close_to(yk, rope_fp64(k, inv, pos, "half"))
    assert lean_calls


@pytest.mark.parametrize(
    "kw, error, words",
    [
        (dict(positions=torch.tensor([0, 1, 2, 99])), RopePositionError, "row 99"),
        (dict(positions=torch.tensor([0, -1, 2, 3])), RopePositionError, "-1"),
        (dict(positions=torch.tensor([0.0, 1.0, 2.0, 3.0])), RopePositionError, "dtype"),
        (dict(positions=torch.tensor([0, 1, 2])), RopeShapeError, "positions [3]"),
        (dict(offsets=14), RopePositionError, "row 17"),
        (dict(offsets=-2), RopePositionError, "-2"),
        (dict(layout="spiral"), Exception, "spiral"),
        (dict(format="sbhd"), RopeArgumentError, "sbhd"),  # an argument, not a shape
    ],
)
def test_errors_stay_clear(kw, error, words):
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=8), 16)
    x = torch.randn(2, 4, 3, 8)
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        rk.apply_rope(x, cos, sin, **kw)


def test_mismatched_qk_errors_stay_clear():
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=8), 16)
    with pytest.raises(RopeShapeError, match="dtype"):
        rk.apply_rope_qk(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8, dtype=torch.float64), cos, sin)
    with pytest.raises(RopeShapeError, match="agree"):
        rk.apply_rope_qk(torch.randn(1, 4, 2, 8), torch.randn(1, 5, 1, 8), cos, sin)
    with pytest.raises(RopeShapeError, match="head_dim"):
        rk.apply_rope(torch.randn(1, 4, 2, 8), *rk.cos_sin(rk.RopeSpec(head_dim=16), 16))


def test_gradients_take_the_differentiable_op(lean_calls):
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=8, layout="interleaved"), 16)
    q = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 1, 8, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0, 3, 1, 15, 2], [4, 4, 4, 4, 4]])
    yq, yk = rk.apply_rope_qk(q, k, cos, sin, layout="interleaved", positions=pos)
    assert not lean_calls and yq.grad_fn is not None
    (yq.square().sum() + (yk * 3).sum()).backward()
    q2, k2 = q.detach().clone().requires_grad_(True), k.detach().clone().requires_grad_(True)
    ref = rk.kernels.rotate_reference
    wq = ref(q2, cos.double(), sin.double(), pos, interleaved=True, inverse=False, inplace=False)
    wk = ref(k2, cos.double(), sin.double(), pos, interleaved=True, inverse=False, inplace=False)
    (wq.square().sum() + (wk * 3).sum()).backward()
    assert torch.allclose(q.grad, q2.grad, atol=1e-12) and torch.allclose(k.grad, k2.grad, atol=1e-12)
    with torch.no_grad():  # no gradient wanted: the lean path, same values
        assert torch.equal(rk.apply_rope_qk(q, k, cos, sin, layout="interleaved", positions=pos)[0], yq)
    assert lean_calls


def test_torch_compile_traces_the_op_not_the_lean_path(lean_calls):
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=16), 16)
    q, k = torch.randn(1, 6, 4, 16), torch.randn(1, 6, 2, 16)
    f = torch.compile(lambda q, k: rk.apply_rope_qk(q, k, cos, sin, offsets=2), fullgraph=True)
    got = f(q, k)
    assert not lean_calls
    want = rk.apply_rope_qk(q, k, cos, sin, offsets=2)
    assert lean_calls
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6, rtol=0)
