"""A patched model under torch.compile: ropekit's stand-ins (rotary module, apply dispatch) trace
into one graph, and the compiled model's logits equal the uncompiled one's.

Dynamo only (``backend="eager"`` / ``"aot_eager"``): Inductor's code generation costs ~50 s for the
tiny model on this machine and tests ropekit nothing more, since the stand-ins never reach it
differently.
"""

from __future__ import annotations

import pytest
import torch

import ropekit as rk

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import tiny_models as tm  # noqa: E402


@pytest.fixture
def patched_llama():
    model, ids = tm.build("llama")
    reference = tm.output(model, ids).detach()
    rk.hf.patch(model)
    torch._dynamo.reset()
    yield model, ids, reference
    torch._dynamo.reset()


def _attention_path(model):
    inner = model.model
    layer = inner.layers[0]

    def attention(hidden, position_ids):
        position_embeddings = inner.rotary_emb(hidden, position_ids)
        return layer.self_attn(hidden, position_embeddings=position_embeddings, attention_mask=None)[0]

    return attention


def test_attention_path_compiles_to_one_graph(patched_llama):
    """fullgraph=True raises at the first graph break: ropekit's rotary module and the apply
    function's dispatch must not read values back to the host or touch a ContextVar while traced."""
    model, ids, _ = patched_llama
    attention = _attention_path(model)
    hidden = model.model.embed_tokens(ids).detach()
    position_ids = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    compiled = torch.compile(attention, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(hidden, position_ids), attention(hidden, position_ids))


def test_patched_model_has_no_graph_break_and_same_logits(patched_llama):
    model, ids, reference = patched_llama
    with torch.no_grad():
        explained = torch._dynamo.explain(lambda i: tm.output(model, i))(ids)
        assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
        torch._dynamo.reset()
        compiled = torch.compile(lambda i: tm.output(model, i), backend="aot_eager")
        logits = compiled(ids)
    assert torch.equal(logits, tm.output(model, ids).detach())
    assert (logits - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_the_stand_in_tables_under_compile_are_cos_sins():
    """The compiled path (frequencies checked once, tables_from) gives cos_sin's tables bit for bit."""
    for spec in (
        rk.RopeSpec(head_dim=16, base=500000.0, scaling=rk.Llama3(8.0, 1.0, 4.0, 8192)),
        rk.RopeSpec(head_dim=16, scaling=rk.Yarn(factor=4.0, original_max_position_embeddings=64)),
        rk.RopeSpec(head_dim=16, mrope_section=(2, 3, 3)),
    ):
        for precision in ("exact", "hf"):
            module = rk.RotaryEmbedding(spec=spec, precision=precision)
            x = torch.zeros(1, 8)
            pos = torch.arange(40)[None]
            eager = module(x, pos)
            traced = torch.compile(module, fullgraph=True, backend="eager")(x, pos)
            torch._dynamo.reset()
            assert all(torch.equal(a, b) for a, b in zip(eager, traced)), (spec.describe(), precision)
