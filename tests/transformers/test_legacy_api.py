"""The incident: a rotary module written for transformers 4.37 broke on 4.38.1.

Two attention modules are written here from the math, the way users wrote them: one in the 4.37
style (``RotaryEmbedding(dim, max_position_embeddings, base)``, ``forward(x, seq_len=)``, tables
gathered by ``position_ids``, reading ``.dim``) and one in the 4.38+ style (``forward(x,
position_ids)``).  Both run unchanged on ``ropekit.RotaryEmbedding(precision="hf")`` under every
release, and the tables are bit for bit those of the installed release's own Llama module,
whichever call that release's module answers.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import ropekit as rk

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
from transformers.models.llama import modeling_llama  # noqa: E402

pytestmark = pytest.mark.release_matrix
DIM, MAX_POS, BASE = 16, 64, 10000.0
LEGACY_RELEASE = "dim" in inspect.signature(modeling_llama.LlamaRotaryEmbedding.__init__).parameters
OLD_FORWARD = "position_ids" not in inspect.signature(modeling_llama.LlamaRotaryEmbedding.forward).parameters


def _rotate_half(x, d):
    return torch.cat((-x[..., d // 2 : d], x[..., : d // 2]), dim=-1)


class Attention437(torch.nn.Module):
    """4.37 style: whole tables for seq_len positions, gathered by position_ids; reads .dim."""

    def __init__(self, rotary):
        super().__init__()
        self.rotary_emb = rotary

    def forward(self, q, k, position_ids):
        cos, sin = self.rotary_emb(q, seq_len=int(position_ids.max()) + 1)
        cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
        d = self.rotary_emb.dim
        return q * cos + _rotate_half(q, d) * sin, k * cos + _rotate_half(k, d) * sin


class Attention438(torch.nn.Module):
    """4.38+ style: per-token tables from position_ids."""

    def __init__(self, rotary):
        super().__init__()
        self.rotary_emb = rotary

    def forward(self, q, k, position_ids):
        cos, sin = self.rotary_emb(q, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * cos + _rotate_half(q, DIM) * sin, k * cos + _rotate_half(k, DIM) * sin


def _theirs(cls_name="LlamaRotaryEmbedding", **legacy):
    """The installed release's own module for (DIM, MAX_POS, BASE)."""
    if LEGACY_RELEASE:
        return getattr(modeling_llama, cls_name)(DIM, max_position_embeddings=MAX_POS, base=BASE, **legacy)
    config = transformers.LlamaConfig(
        hidden_size=DIM * 2, num_attention_heads=2, max_position_embeddings=MAX_POS, rope_theta=BASE
    )
    return modeling_llama.LlamaRotaryEmbedding(config)


def _their_tables(module, position_ids, dtype):
    x = torch.zeros(1, dtype=dtype)
    if "position_ids" in inspect.signature(module.forward).parameters:
        return module(x, position_ids)
    cos, sin = module(x, seq_len=int(position_ids.max()) + 1)
    return cos[position_ids], sin[position_ids]


POSITIONS = torch.tensor([[0, 1, 2, 3, 40, 41], [5, 6, 7, 60, 61, 62]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("style", [Attention437, Attention438])
def test_user_modules_run_unchanged_with_bit_identical_tables(style, dtype):
    ours = rk.RotaryEmbedding(DIM, max_position_embeddings=MAX_POS, base=BASE, precision="hf")
    assert ours.dim == DIM and ours.base == BASE and ours.inv_freq.dtype == torch.float32
    theirs = _theirs()
    want_cos, want_sin = _their_tables(theirs, POSITIONS, dtype)
    got_cos, got_sin = _their_tables(ours, POSITIONS, dtype)  # the same call the release answers
    assert torch.equal(got_cos, want_cos) and torch.equal(got_sin, want_sin)

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 6, DIM, generator=g).to(dtype), torch.randn(2, 2, 6, DIM, generator=g).to(dtype)
    got = style(ours)(q, k, POSITIONS)  # the user's module, unchanged, on ropekit
    cos, sin = want_cos.unsqueeze(1), want_sin.unsqueeze(1)
    want = (q * cos + _rotate_half(q, DIM) * sin, k * cos + _rotate_half(k, DIM) * sin)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    if style is Attention437 and OLD_FORWARD:  # the release's own module runs this style too
        assert all(torch.equal(a, b) for a, b in zip(style(theirs)(q, k, POSITIONS), want))
    if style is Attention438 and not OLD_FORWARD:
        assert all(torch.equal(a, b) for a, b in zip(style(theirs)(q, k, POSITIONS), want))


@pytest.mark.skipif(not LEGACY_RELEASE, reason="the legacy scaled classes exist up to 4.45 only")
@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_legacy_linear_class_is_bit_identical(factor):
    theirs = _theirs("LlamaLinearScalingRotaryEmbedding", scaling_factor=factor)
    ours = rk.transformers.rotary_embedding.LinearScalingRotaryEmbedding(
        DIM, MAX_POS, BASE, None, factor, precision="hf"
    )
    for dtype in (torch.float32, torch.bfloat16):
        for a, b in zip(_their_tables(ours, POSITIONS, dtype), _their_tables(theirs, POSITIONS, dtype)):
            assert torch.equal(a, b)


@pytest.mark.skipif(not (LEGACY_RELEASE and OLD_FORWARD), reason="4.37's growing dynamic cache")
def test_legacy_dynamic_cache_grows_and_never_resets_as_437_did():
    theirs = _theirs("LlamaDynamicNTKScalingRotaryEmbedding", scaling_factor=2.0)
    ours = rk.transformers.rotary_embedding.DynamicNTKScalingRotaryEmbedding(
        DIM, MAX_POS, BASE, scaling_factor=2.0, precision="hf"
    )
    x = torch.zeros(1)
    for n in (10, 200, 50, 300, 20):  # grows at 200 and 300; the shorter calls keep the grown base
        for a, b in zip(ours(x, seq_len=n), theirs(x, seq_len=n)):
            assert torch.equal(a, b), n
    assert torch.equal(ours.inv_freq, theirs.inv_freq)


@pytest.mark.skipif(not (LEGACY_RELEASE and not OLD_FORWARD), reason="4.38-4.45's dynamic class with position_ids")
def test_dynamic_class_with_position_ids_follows_the_release_rule():
    """4.38-4.42 recompute for every call longer than the original and keep that (a shorter call
    reuses the last long one); 4.43-4.45 grow past the longest seen and reset below the original."""
    theirs = _theirs("LlamaDynamicNTKScalingRotaryEmbedding", scaling_factor=2.0)
    ours = rk.transformers.rotary_embedding.DynamicNTKScalingRotaryEmbedding(
        DIM, MAX_POS, BASE, scaling_factor=2.0, precision="hf"
    )
    x = torch.zeros(1)
    for n in (10, 200, 100, 300, 20, 150, 30):  # long, shorter long, longer, short, long, short
        pos = torch.arange(n)[None]
        for a, b in zip(ours(x, pos), theirs(x, pos)):
            assert torch.equal(a, b), n


@pytest.mark.skipif(LEGACY_RELEASE and OLD_FORWARD, reason="config-driven dynamic modules (4.38+)")
def test_stateful_dynamic_reproduces_the_release_cache_bit_for_bit():
    config = transformers.LlamaConfig(
        hidden_size=DIM * 2,
        num_attention_heads=2,
        max_position_embeddings=MAX_POS,
        rope_theta=BASE,
        rope_scaling={"type": "dynamic", "factor": 2.0},
    )
    try:
        theirs = modeling_llama.LlamaRotaryEmbedding(config=config)
    except TypeError:
        pytest.skip("this release builds dynamic modules from numbers only")
    if getattr(theirs, "rope_type", "dynamic") != "dynamic":
        pytest.skip("this release's config-driven module does not read dynamic scaling")
    ours = rk.RotaryEmbedding(config, precision="hf", stateful=True)
    x = torch.zeros(1)
    for n in (10, 200, 100, 300, 20, 150):  # grow, keep, grow, reset below the original, grow again
        pos = torch.arange(n)[None]
        for a, b in zip(ours(x, pos), theirs(x, pos)):
            assert torch.equal(a, b), n
    stateless = rk.RotaryEmbedding(config, precision="hf")
    stateless(x, torch.arange(300)[None])
    theirs(x, torch.arange(300)[None])
    mid = torch.arange(100)[None]
    assert not torch.equal(stateless(x, mid)[0], theirs(x, mid)[0])  # the default recomputes per call


def test_inv_freq_is_never_a_buffer_and_survives_bf16():
    rope = rk.RotaryEmbedding(DIM, max_position_embeddings=MAX_POS, base=BASE)
    before = rope.inv_freq.clone()
    rope.to(torch.bfloat16)
    assert not list(rope.buffers()) and rope.inv_freq.dtype == torch.float32
    assert torch.equal(rope.inv_freq, before)
    assert rope.cos_cached.shape == (MAX_POS, DIM) and rope.cos_cached.dtype == torch.float32


def test_state_dict_with_inv_freq_loads_strictly_and_a_wrong_one_is_refused():
    rope = rk.RotaryEmbedding(DIM, max_position_embeddings=MAX_POS, base=BASE)
    good = 1.0 / (BASE ** (torch.arange(0, DIM, 2).float() / DIM))
    result = rope.load_state_dict({"inv_freq": good}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with pytest.raises(rk.RopeCheckpointError, match="inv_freq.*another base"):
        rope.load_state_dict({"inv_freq": 1.0 / (20000.0 ** (torch.arange(0, DIM, 2).float() / DIM))})
    with pytest.raises(rk.RopeCheckpointError, match="different length"):
        rope.load_state_dict({"inv_freq": good[:4]})
