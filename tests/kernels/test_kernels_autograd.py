"""Gradients: autograd of the reference is right (gradcheck in fp64), and every kernel's backward
(the inverse rotation by the same kernel) gives the reference's gradients; the custom ops pass
torch.library's own consistency checks."""

import pytest
import torch

import ropekit as rk
from ropekit.kernels import ops

BACKENDS = ["triton", "cpu"]


def _tables(head_dim, rotary_dim, layout, dtype=torch.float64, n=16):
    spec = rk.RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, layout=layout)
    return rk.cos_sin(spec, n, dtype=dtype)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("format", ["bshd", "bhsd"])
def test_gradcheck_reference_fp64(layout, format):
    cos, sin = _tables(8, 6, layout)  # partial: the tail's gradient passes straight through
    x = torch.randn(2, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0, 5, 9], [2, 2, 15]])
    if format == "bhsd":
        pos = pos[:, :2]  # bhsd [2, 3, 2, 8]: seq is dim 2 (length 2)
    f = lambda t: rk.apply_rope(t, cos, sin, layout=layout, format=format, positions=pos, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_gradcheck_reference_tables_fp64():
    # learnable tables differentiate through the reference (plain autograd)
    cos, sin = _tables(8, 8, "half", n=4)
    cos.requires_grad_(True)
    sin.requires_grad_(True)
    x = torch.randn(1, 4, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, s: rk.apply_rope(a, c, s, backend="reference"), (x, cos, sin))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_gradcheck_through_the_custom_op_fp64(backend):
    # the op's registered backward (inverse rotation) against numerical derivatives
    # tiny (each numerical derivative is two calls): 2 tokens, q 2 heads / k 1, 4 of 6 dims rotate
    cos, sin = _tables(6, 4, "interleaved", n=6)
    q = torch.randn(1, 2, 2, 6, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 1, 6, dtype=torch.float64, requires_grad=True)
    f = lambda a, b: rk.apply_rope_qk(a, b, cos, sin, layout="interleaved", offsets=2, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k))


def _grads(fn, inputs, upstream):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, upstream)
    return [t.grad for t in leaves], outs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "layout, frac, dtype",
    [("half", 1.0, torch.float32), ("interleaved", 0.5, torch.bfloat16), ("half", 0.25, torch.float16)],
)
def test_kernel_grads_match_reference(backend, layout, frac, dtype):
    D = 80
    spec = rk.RopeSpec(head_dim=D, rotary_dim=int(D * frac) // 2 * 2, layout=layout)
    cos, sin = rk.cos_sin(spec, 32)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 7, 3, D, generator=g).to(dtype)
    k = torch.randn(2, 7, 1, D, generator=g).to(dtype)
    up = (torch.randn(2, 7, 3, D, generator=g).to(dtype), torch.randn(2, 7, 1, D, generator=g).to(dtype))
    pos = torch.randint(0, 32, (2, 7), generator=g)

    def run(b):
        return lambda a, c: rk.apply_rope_qk(a, c, cos, sin, layout=layout, positions=pos, backend=b)

    (gq, gk), _ = _grads(run(backend), (q, k), up)
    (rq, rk_), _ = _grads(run("reference"), (q, k), up)
    # the same math in fp32 on both sides: only the final rounding to dtype may differ
    tol = {torch.float32: 2e-6, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    for a, b in ((gq, rq), (gk, rk_)):
        assert a.dtype == dtype
        assert (a.double() - b.double()).abs().max().item() <= tol * max(1.0, b.double().abs().max().item())
    # the tail's gradient is the upstream gradient itself, bit for bit
    r = spec.rotary_dim
    assert torch.equal(gq[..., r:], up[0][..., r:]) and torch.equal(gk[..., r:], up[1][..., r:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_qkv_grads_match_reference(backend):
    cos, sin = _tables(16, 16, "half", dtype=torch.float32)
    qkv = torch.randn(2, 5, (3 + 2 * 1) * 16)
    up = torch.randn_like(qkv)
    f = lambda b: lambda t: rk.apply_rope_qkv(t, cos, sin, n_q_heads=3, n_kv_heads=1, backend=b)  # noqa: E731
    (g,), _ = _grads(f(backend), (qkv,), (up,))
    (r,), _ = _grads(f("reference"), (qkv,), (up,))
    assert (g - r).abs().max().item() <= 2e-6
    assert torch.equal(g[..., 4 * 16 :], up[..., 4 * 16 :])  # v's gradient passes through


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_gradcheck_in_place_fp64(backend, layout):
    # in place with autograd (flash-attn's inplace=True): the backward is the inverse rotation
    cos, sin = _tables(6, 4, layout, n=6)
    q = torch.randn(1, 2, 2, 6, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 1, 6, dtype=torch.float64, requires_grad=True)

    def f(a, b):  # a leaf cannot change in place: rotate the result of an operation, as a model does
        a, b = a * 1.0, b * 1.0
        out = rk.apply_rope_qk(a, b, cos, sin, layout=layout, offsets=2, inplace=True, backend=backend)
        assert out[0] is a and out[1] is b
        return out

    assert torch.autograd.gradcheck(f, (q, k))
    g = lambda a: rk.apply_rope((a * 1.0).transpose(1, 2), cos, sin, layout=layout, format="bhsd", inplace=True)  # noqa: E731
    assert torch.autograd.gradcheck(g, (q,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_grads_match_the_oracle_and_out_of_place(backend, dtype):
    from oracle import assert_close_to, rope_fp64

    spec = rk.RopeSpec(head_dim=32, rotary_dim=16, layout="interleaved")
    cos, sin = rk.cos_sin(spec, 32)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(2, 7, 3, 32, generator=g).to(dtype).requires_grad_(True)
    up = torch.randn(2, 7, 3, 32, generator=g).to(dtype)
    pos = torch.randint(0, 32, (2, 7), generator=g)
    kw = dict(layout="interleaved", positions=pos, backend=backend)
    x = w * 1
    y = rk.apply_rope(x, cos, sin, inplace=True, **kw)
    assert y is x
    (gin,) = torch.autograd.grad(y, w, up)
    (gout,) = torch.autograd.grad(rk.apply_rope(w, cos, sin, **kw), w, up)
    assert torch.equal(gin, gout)
    # d(y . up)/dx is the inverse rotation of up; the tail's gradient is up itself
    assert_close_to(gin, rope_fp64(up, rk.inv_freq(spec)[0], pos, "interleaved", inverse=True), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_packed_qkv_grads_match_reference(backend):
    cos, sin = _tables(16, 16, "half", dtype=torch.float32)
    w = torch.randn(2, 5, (3 + 2 * 1) * 16, requires_grad=True)
    up = torch.randn_like(w)
    f = lambda b, inplace: rk.apply_rope_qkv(w * 1, cos, sin, n_q_heads=3, n_kv_heads=1, inplace=inplace, backend=b)  # noqa: E731
    (gin,) = torch.autograd.grad(f(backend, True), w, up)
    (ref,) = torch.autograd.grad(f("reference", False), w, up)
    assert (gin - ref).abs().max().item() <= 2e-6
    assert torch.equal(gin[..., 4 * 16 :], up[..., 4 * 16 :])  # v's gradient passes through


def test_in_place_backward_leaves_a_shared_incoming_gradient_alone():
    # autograd hands the add's one gradient tensor to both branches: rotating it in place would
    # corrupt the other branch's gradient
    cos, sin = _tables(8, 8, "half", dtype=torch.float32)
    w1 = torch.randn(1, 4, 2, 8, requires_grad=True)
    w2 = torch.randn(1, 4, 2, 8, requires_grad=True)
    up = torch.randn(1, 4, 2, 8)
    y = rk.apply_rope(w1 * 1, cos, sin, inplace=True, backend="cpu")
    ((y + w2) * up).sum().backward()
    assert torch.equal(w2.grad, up)


def test_in_place_on_a_leaf_that_requires_grad_is_a_clear_error():
    cos, sin = _tables(8, 8, "half", dtype=torch.float32)
    x = torch.randn(1, 4, 2, 8, requires_grad=True)
    with pytest.raises(rk.RopeError, match="inplace=True on a leaf tensor that requires grad"):
        rk.apply_rope(x, cos, sin, inplace=True)
    with pytest.raises(rk.RopeError, match="inplace=True on a leaf tensor"):
        rk.apply_rope(x.transpose(1, 2), cos, sin, format="bhsd", inplace=True)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck_custom_ops(backend):
    cos, sin = _tables(8, 6, "half", dtype=torch.float32)
    pos = torch.tensor([[0, 3, 7]])
    x = torch.randn(1, 3, 2, 8, requires_grad=True)
    k = torch.randn(1, 3, 1, 8, requires_grad=True)
    torch.library.opcheck(ops.rope, (x, cos, sin, pos, False, False, backend))
    if backend == "cpu":  # each check recompiles the cpu variants: the one op is enough there
        return
    torch.library.opcheck(ops.rope_qk, (x, k, cos, sin, pos, True, True, backend))
    torch.library.opcheck(ops.rope_, (x.detach().clone(), cos, sin, pos, False, False, backend))
    torch.library.opcheck(ops.rope_qk_, (x.detach().clone(), k.detach().clone(), cos, sin, pos, False, True, backend))
