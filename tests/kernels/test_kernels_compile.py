"""The custom ops under ``torch.compile(fullgraph=True)``: one graph, no break, same numbers as
eager, forward and backward."""

import pytest
import torch

import ropekit as rk


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 4, 32, generator=g).to(dtype)
    k = torch.randn(2, 6, 2, 32, generator=g).to(dtype)
    pos = torch.randint(0, 64, (2, 6), generator=g)
    return q, k, pos


@pytest.mark.parametrize("backend", [None, "reference", "cpu", "triton"])
def test_compile_fullgraph_one_graph_no_break(backend):
    spec = rk.RopeSpec(head_dim=32, rotary_dim=16, layout="interleaved")
    cos, sin = rk.cos_sin(spec, 64)
    q, k, pos = _inputs()

    def attention_scores(q, k, pos):
        q, k = rk.apply_rope_qk(q, k, cos, sin, layout="interleaved", positions=pos, backend=backend)
        return torch.einsum("bshd,bthd->bhst", q[:, :, :2], k)  # ops around the rope stay in the graph

    explain = torch._dynamo.explain(attention_scores)(q, k, pos)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(attention_scores, fullgraph=True)
    assert torch.allclose(compiled(q, k, pos), attention_scores(q, k, pos), atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_compile_fullgraph_backward_matches_eager(backend):
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=32), 16)
    q, k, _ = _inputs()

    def loss(q, k):
        yq, yk = rk.apply_rope_qk(q, k, cos, sin, format="bshd", offsets=3, backend=backend)
        return (yq[:, :, :2] * yk).square().sum()

    grads = []
    for fn in (loss, torch.compile(loss, fullgraph=True)):
        a, b = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        fn(a, b).backward()
        grads.append((a.grad, b.grad))
    for eager, comp in zip(*grads):
        assert (eager - comp).abs().max().item() <= 1e-4


def test_compile_fullgraph_in_place():
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=32), 16)
    q, k, _ = _inputs()

    def step(q, k):
        rk.apply_rope_qk(q, k, cos, sin, inplace=True, backend="reference")
        return q.sum() + k.sum()

    a, b = q.clone(), k.clone()
    torch.compile(step, fullgraph=True)(a, b)
    ea, eb = rk.apply_rope_qk(q, k, cos, sin, backend="reference")
    assert torch.allclose(a, ea, atol=1e-6) and torch.allclose(b, eb, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_real_output_strides_match_the_fake(backend, layout):
    # torch.compile plans the graph with the fake's strides: the kernel must honour them, also
    # for a strided (bhsd) view and full rotary, where a pointwise result could keep x's strides
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ropekit.kernels import ops

    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=32, layout=layout), 16)
    x4 = torch.randn(2, 4, 6, 32).transpose(1, 2)
    pos = torch.arange(6)[None].expand(2, 6)
    real = ops.rope(x4, cos, sin, pos, layout == "interleaved", False, backend)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = ops.rope(mode.from_tensor(x4), cos, sin, pos, layout == "interleaved", False, backend)
    assert real.stride() == fake.stride()
