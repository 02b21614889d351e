"""Parity with transformers' own rotary modules, family by family, scaling by scaling.

For each case a tiny config is built offline twice: as the family's transformers config class
(the object a model would get) and as the raw dict a ``config.json`` would hold.  ``from_config``
must read both to the same spec, and ``cos_sin(spec, positions, precision="hf")`` must equal the
first r/2 columns of that family's ``*RotaryEmbedding`` output to <= 2 fp32 ulp.  Rotated q/k are
then compared with the family's own ``apply_rotary_pos_emb``.

A fresh rotary module is built for every call: transformers' dynamic/longrope modules keep state
that grows with the longest sequence seen.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

import pytest
import torch

import ropekit as rk

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ORIG = 1024  # the "original context" of every tiny config; positions go to 2 * ORIG
HIDDEN, HEADS = 128, 4  # head_dim 32: 16 frequencies, enough to cover every yarn/llama3 region


#: family (models/<family>/modeling_<family>.py) -> its config class, rotary module class, and the
#: model_type a config.json of it says
FAMILY_CLASSES = {
    "llama": ("LlamaConfig", "LlamaRotaryEmbedding", "llama"),
    "mistral": ("MistralConfig", "MistralRotaryEmbedding", "mistral"),
    "qwen2": ("Qwen2Config", "Qwen2RotaryEmbedding", "qwen2"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXRotaryEmbedding", "gpt_neox"),
    "phi": ("PhiConfig", "PhiRotaryEmbedding", "phi"),
    "phi3": ("Phi3Config", "Phi3RotaryEmbedding", "phi3"),
    "gptj": ("GPTJConfig", "GPTJRotaryEmbedding", "gptj"),
    "codegen": ("CodeGenConfig", "CodeGenRotaryEmbedding", "codegen"),
    "glm": ("GlmConfig", "GlmRotaryEmbedding", "glm"),
    "glm4": ("Glm4Config", "Glm4RotaryEmbedding", "glm4"),
    "cohere": ("CohereConfig", "CohereRotaryEmbedding", "cohere"),
    "cohere2": ("Cohere2Config", "Cohere2RotaryEmbedding", "cohere2"),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2RotaryEmbedding", "deepseek_v2"),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3RotaryEmbedding", "deepseek_v3"),
    "gemma3": ("Gemma3TextConfig", "Gemma3RotaryEmbedding", "gemma3_text"),
    "qwen2_vl": ("Qwen2VLTextConfig", "Qwen2VLRotaryEmbedding", "qwen2_vl"),
    "qwen3_vl": ("Qwen3VLTextConfig", "Qwen3VLTextRotaryEmbedding", "qwen3_vl"),
}


@dataclass
class Case:
    id: str
    family: str  # a key of FAMILY_CLASSES
    kwargs: dict
    output: str = "cat"  # cat: [cos, cos] | repeat: repeat_interleave | sincos: GPT-J (sin, cos) | complex
    layer_type: str | None = None
    mrope: bool = False
    switch: int | None = None  # dynamic/longrope: the seq_len where the frequencies change
    expect: dict = field(default_factory=dict)  # facts about the spec from_config must produce
    config_cls: str = field(init=False)
    rotary_cls: str = field(init=False)
    model_type: str = field(init=False)  # what a config.json says

    def __post_init__(self):
        self.config_cls, self.rotary_cls, self.model_type = FAMILY_CLASSES[self.family]


def _sized(**kwargs) -> dict:
    """A tiny config's keyword arguments: HIDDEN wide, HEADS heads, ORIG positions, then ``kwargs``."""
    return {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "max_position_embeddings": ORIG, **kwargs}


def _llama(rope_scaling=None, **extra):
    kw = _sized(rope_theta=10000.0)
    if rope_scaling is not None:
        kw["rope_scaling"] = rope_scaling
    kw.update(extra)
    return kw


def _mla(max_position_embeddings: int, **extra) -> dict:
    """DeepSeek-V2/V3 multi-head latent attention: 16 of each head's dims rotate."""
    mla = dict(qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32, kv_lora_rank=32, q_lora_rank=32)
    return _sized(**mla, max_position_embeddings=max_position_embeddings, **extra)


def _deepseek_yarn(mscale: float, mscale_all_dim: float) -> dict:
    return {
        "type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": ORIG,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": mscale,
        "mscale_all_dim": mscale_all_dim,
    }


def _gemma3(**extra) -> dict:
    """Gemma 3's text tower: a global base for full attention, a local one for sliding windows."""
    return _sized(head_dim=32, rope_theta=1e6, rope_local_base_freq=10000.0, **extra)


def _gptj_style(family: str, rotary_dim: int) -> Case:
    """GPT-J and CodeGen: the same config keys, (sin, cos) tables, interleaved pairs."""
    kwargs = dict(n_embd=HIDDEN, n_head=HEADS, rotary_dim=rotary_dim, n_positions=2 * ORIG + 1)
    return Case(family, family, kwargs, output="sincos", expect=dict(layout="interleaved", rotary_dim=rotary_dim))


LONG = [1.0 + 0.37 * i for i in range(16)]
SHORT = [1.0 + 0.011 * i for i in range(16)]
PHI3_SHORT = [1.0 + 0.02 * i for i in range(8)]
PHI3_LONG = [1.5 + 0.9 * i for i in range(8)]

CASES = [
    # every scaling type through the Llama module (half layout)
    Case(
        "llama-default",
        "llama",
        _llama(),
        expect=dict(layout="half", rotary_dim=32, scaling=None),
    ),
    Case(
        "llama-linear",
        "llama",
        _llama({"type": "linear", "factor": 4.0}),
        expect=dict(scaling="linear"),
    ),
    Case(
        "llama-dynamic",
        "llama",
        _llama({"rope_type": "dynamic", "factor": 2.0}),
        switch=ORIG,
        expect=dict(scaling="dynamic"),
    ),
    Case(
        "llama-yarn",
        "llama",
        _llama(
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIG},
            max_position_embeddings=4 * ORIG,
        ),
        expect=dict(scaling="yarn"),
    ),
    Case(
        "llama-yarn-nofactor-attn",
        "llama",
        _llama(
            {
                "rope_type": "yarn",
                "factor": None,
                "original_max_position_embeddings": ORIG,
                "attention_factor": 1.25,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
            },
            max_position_embeddings=8 * ORIG,
        ),
        expect=dict(scaling="yarn", factor=8.0, attention_factor=1.25),
    ),
    Case(
        "llama-yarn-notruncate",
        "llama",
        _llama(
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIG, "truncate": False},
            max_position_embeddings=4 * ORIG,
        ),
        expect=dict(scaling="yarn"),
    ),
    Case(
        "llama-llama3",
        "llama",
        _llama(
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": ORIG,
            },
            max_position_embeddings=8 * ORIG,
            rope_theta=500000.0,
        ),
        expect=dict(scaling="llama3"),
    ),
    Case(
        "llama-longrope",
        "llama",
        _llama(
            {
                "rope_type": "longrope",
                "short_factor": SHORT,
                "long_factor": LONG,
                "original_max_position_embeddings": ORIG,
            },
            max_position_embeddings=4 * ORIG,
        ),
        switch=ORIG,
        expect=dict(scaling="longrope", factor=4.0),
    ),
    Case(
        "llama-proportional",
        "llama",
        _sized(
            rope_parameters={
                "rope_type": "proportional",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
                "factor": 2.0,
            },
        ),
        expect=dict(scaling="proportional", rotary_dim=32),
    ),
    Case(
        "llama-proportional-0.3",
        "llama",
        _sized(rope_parameters={"rope_type": "proportional", "rope_theta": 10000.0, "partial_rotary_factor": 0.3}),
        expect=dict(scaling="proportional", rotary_dim=32),
    ),
    # v5 form (rope_parameters with rope_theta inside)
    Case(
        "mistral-v5-yarn",
        "mistral",
        _sized(
            head_dim=32,
            max_position_embeddings=4 * ORIG,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e6,
                "factor": 4.0,
                "original_max_position_embeddings": ORIG,
            },
        ),
        expect=dict(base=1e6),
    ),
    Case(
        "qwen2-dynamic",
        "qwen2",
        _llama({"type": "dynamic", "factor": 3.0}, rope_theta=1e6),
        switch=ORIG,
    ),
    # partial rotary, half layout
    Case(
        "gpt_neox-partial",
        "gpt_neox",
        _sized(rotary_pct=0.25, rotary_emb_base=20000),
        expect=dict(rotary_dim=8, base=20000.0),
    ),
    Case(
        "gpt_neox-linear",
        "gpt_neox",
        _sized(rotary_pct=0.5, rope_scaling={"type": "linear", "factor": 2.0}),
        expect=dict(rotary_dim=16, scaling="linear"),
    ),
    Case(
        "phi-partial-dynamic",
        "phi",
        _sized(partial_rotary_factor=0.5, rope_scaling={"type": "dynamic", "factor": 2.0}),
        switch=ORIG,
        expect=dict(rotary_dim=16),
    ),
    Case(
        "phi3-longrope",
        "phi3",
        dict(
            hidden_size=64,
            num_attention_heads=4,
            max_position_embeddings=4 * ORIG,
            original_max_position_embeddings=ORIG,
            rope_scaling={"type": "longrope", "short_factor": PHI3_SHORT, "long_factor": PHI3_LONG},
        ),
        switch=ORIG,
        expect=dict(scaling="longrope", factor=4.0, rotary_dim=16),
    ),
    Case(
        "phi3-su-partial",
        "phi3",
        dict(
            hidden_size=128,
            num_attention_heads=4,
            max_position_embeddings=4 * ORIG,
            partial_rotary_factor=0.5,
            original_max_position_embeddings=ORIG,
            rope_scaling={
                "type": "su",
                "short_factor": PHI3_SHORT,
                "long_factor": PHI3_LONG,
                "original_max_position_embeddings": ORIG,
            },
        ),
        switch=ORIG,
        expect=dict(scaling="longrope", rotary_dim=16),
    ),
    # interleaved families
    _gptj_style("gptj", rotary_dim=16),
    _gptj_style("codegen", rotary_dim=8),
    Case(
        "glm-partial",
        "glm",
        _sized(head_dim=32, rope_theta=10000.0),
        expect=dict(layout="interleaved", rotary_dim=16),
    ),
    Case(
        "glm4-partial-linear",
        "glm4",
        _sized(head_dim=32, rope_scaling={"rope_type": "linear", "factor": 2.0}),
        expect=dict(layout="interleaved", rotary_dim=16),
    ),
    Case(
        "cohere",
        "cohere",
        _sized(rope_theta=8e6),
        output="repeat",
        expect=dict(layout="interleaved", base=8e6),
    ),
    Case(
        "cohere2-dynamic",
        "cohere2",
        _sized(head_dim=32, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
        output="repeat",
        switch=ORIG,
    ),
    Case(
        "deepseek_v2-yarn",
        "deepseek_v2",
        _mla(40 * ORIG, rope_scaling=_deepseek_yarn(mscale=0.707, mscale_all_dim=0.707)),
        output="complex",
        expect=dict(layout="interleaved", head_dim=16),
    ),
    Case(
        "deepseek_v3-yarn-mscale",
        "deepseek_v3",
        _mla(40 * ORIG, rope_scaling=_deepseek_yarn(mscale=1.0, mscale_all_dim=0.8)),
        expect=dict(layout="interleaved", head_dim=16),
    ),
    Case(
        "deepseek_v3-half",
        "deepseek_v3",
        _mla(ORIG, rope_interleave=False),
        expect=dict(layout="half"),
    ),
    # per-layer-type RoPE
    Case(
        "gemma3-full-linear",
        "gemma3",
        _gemma3(rope_scaling={"rope_type": "linear", "factor": 8.0}),
        layer_type="full_attention",
        expect=dict(base=1e6, scaling="linear"),
    ),
    Case(
        "gemma3-sliding",
        "gemma3",
        _gemma3(rope_scaling={"rope_type": "linear", "factor": 8.0}),
        layer_type="sliding_attention",
        expect=dict(base=10000.0, scaling=None),
    ),
    Case(
        "gemma3-v5-nested-yarn",
        "gemma3",
        _sized(
            head_dim=32,
            max_position_embeddings=4 * ORIG,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {
                    "rope_type": "yarn",
                    "rope_theta": 1e6,
                    "factor": 4.0,
                    "original_max_position_embeddings": ORIG,
                },
            },
        ),
        layer_type="full_attention",
        expect=dict(base=1e6, scaling="yarn"),
    ),
    # multimodal RoPE
    Case(
        "qwen2_vl-mrope",
        "qwen2_vl",
        _sized(rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}),
        mrope=True,
    ),
    Case(
        "qwen3_vl-mrope-interleaved",
        "qwen3_vl",
        _sized(
            head_dim=32,
            rope_scaling={"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
        ),
        mrope=True,
    ),
]


def _cls(case: Case, name: str):
    module = importlib.import_module(f"transformers.models.{case.family}.modeling_{case.family}")
    if hasattr(module, name):
        return getattr(module, name)
    return getattr(importlib.import_module(f"transformers.models.{case.family}.configuration_{case.family}"), name)


def _config(case: Case):
    return _cls(case, case.config_cls)(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in case.kwargs.items()})


def _raw_dict(case: Case) -> dict:
    """What config.json would hold (transformers' class defaults are NOT applied)."""
    return {"model_type": case.model_type, **case.kwargs}


def _hf_tables(case: Case, config, position_ids: torch.Tensor):
    """cos, sin of the family's own rotary module, reduced to compact [.., r/2] tables."""
    rotary = _cls(case, case.rotary_cls)(config)
    x = torch.zeros(1, dtype=torch.float32)
    if case.layer_type is not None:
        out = rotary(x, position_ids, case.layer_type)
    else:
        out = rotary(x, position_ids)
    if case.output == "complex":
        return out.real, out.imag
    if case.output == "sincos":
        sin, cos = out
        return cos, sin
    cos, sin = out
    if case.output == "repeat":
        return cos[..., ::2], sin[..., ::2]
    half = cos.shape[-1] // 2
    return cos[..., :half], sin[..., :half]


def _positions(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pos = torch.cat(
        [
            torch.arange(70),
            torch.randint(0, 2 * ORIG + 1, (200,), generator=g),
            torch.tensor([ORIG - 1, ORIG, ORIG + 1, 2 * ORIG]),
        ]
    )
    return torch.unique(pos)[None, :]  # [1, n], sorted


def _mrope_positions(n: int) -> torch.Tensor:
    t = torch.arange(n)
    return torch.stack([t, t // 3 + 5, (t * 7) % 23])[:, None, :]  # [3, 1, n]: three distinct axes


def _ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in units of the fp32 spacing at max(|a|, |b|)."""
    a64, b64 = a.double(), b.double()
    big = torch.maximum(a.abs(), b.abs()).float()
    spacing = (torch.nextafter(big, torch.full_like(big, math.inf)) - big).double()
    return ((a64 - b64).abs() / spacing).max().item()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_from_config_reads_object_and_json_alike(case):
    config = _config(case)
    spec = rk.from_config(config, layer_type=case.layer_type)
    assert rk.from_config(_raw_dict(case), layer_type=case.layer_type) == spec
    assert rk.from_config(config.to_dict(), layer_type=case.layer_type) == spec
    for key, want in case.expect.items():
        if key == "scaling":
            assert (spec.scaling.kind if spec.scaling else None) == want
        elif key == "factor":
            assert spec.scaling.factor == pytest.approx(want)
        else:
            assert getattr(spec, key) == want, key


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cos_sin_hf_matches_the_family_rotary_module(case):
    config = _config(case)
    spec = rk.from_config(config, layer_type=case.layer_type)
    position_ids = _mrope_positions(2 * ORIG + 1) if case.mrope else _positions()
    hf_cos, hf_sin = _hf_tables(case, config, position_ids)
    ours = position_ids[:, 0, :] if case.mrope else position_ids[0]
    cos, sin = rk.cos_sin(spec, ours, precision="hf")
    assert cos.shape == hf_cos[0].shape == (ours.shape[-1], spec.n_pairs)
    assert _ulps(cos, hf_cos[0]) <= 2 and _ulps(sin, hf_sin[0]) <= 2


SWITCHING = [c for c in CASES if c.switch is not None]


@pytest.mark.parametrize("case", SWITCHING, ids=[c.id for c in SWITCHING])
@pytest.mark.parametrize("offset", [-ORIG // 2, 0, 1, ORIG])
def test_dynamic_and_longrope_on_both_sides_of_the_switch(case, offset):
    config = _config(case)
    spec = rk.from_config(config)
    seq_len = case.switch + offset
    position_ids = torch.arange(seq_len)[None, :]
    hf_cos, hf_sin = _hf_tables(case, config, position_ids)  # fresh module: no state from other lengths
    cos, sin = rk.cos_sin(spec, seq_len, precision="hf")
    assert _ulps(cos, hf_cos[0]) <= 2 and _ulps(sin, hf_sin[0]) <= 2
    # the switch must actually change the table (otherwise this test proves nothing)
    short_cos, _ = rk.cos_sin(spec, seq_len, precision="hf", seq_len=case.switch)
    assert torch.equal(cos, short_cos) == (offset <= 0)


# ---------------------------------------------------------------------------------------------
# rotated q/k versus each family's own apply_rotary_pos_emb
# ---------------------------------------------------------------------------------------------

ROTATION = [
    "llama-llama3",
    "gpt_neox-partial",
    "gptj",
    "codegen",
    "glm-partial",
    "cohere",
    "deepseek_v2-yarn",
    "deepseek_v3-yarn-mscale",
    "deepseek_v3-half",
    "qwen2_vl-mrope",
    "qwen3_vl-mrope-interleaved",
    "phi3-su-partial",
]


def _fp32_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    # same fp32 products and sums: at most one rounding apart at the output's magnitude
    err = (ours.double() - theirs.double()).abs().max().item()
    assert err <= 2 * torch.finfo(torch.float32).eps * theirs.abs().max().item(), err


@pytest.mark.parametrize("case_id", ROTATION)
def test_rotated_qk_equal_the_family_apply_rotary_pos_emb(case_id):
    case = next(c for c in CASES if c.id == case_id)
    config = _config(case)
    spec = rk.from_config(config, layer_type=case.layer_type)
    modeling = importlib.import_module(f"transformers.models.{case.family}.modeling_{case.family}")
    g = torch.Generator().manual_seed(1)
    b, s, hq, hk, d = 2, 48, 4, 2, spec.head_dim
    q, k = torch.randn(b, hq, s, d, generator=g), torch.randn(b, hk, s, d, generator=g)  # bhsd
    if case.mrope:
        position_ids = _mrope_positions(s).expand(3, b, s)
        cos_r, sin_r = rk.cos_sin(spec, position_ids[:, 0, :], precision="hf")  # row i = token i
    else:
        position_ids = (torch.arange(s) + 900)[None, :].expand(b, s)  # crosses the llama3/yarn regions
        cos_r, sin_r = rk.cos_sin(spec, position_ids[0], precision="hf")
    q_r, k_r = rk.apply_rope_qk(q, k, cos_r, sin_r, layout=spec.layout, format="bhsd")

    rotary = _cls(case, case.rotary_cls)(config)
    x = torch.zeros(1)
    if case.output == "sincos":  # GPT-J / CodeGen: bshd tensors, (sin, cos) order, rotary part only
        sin, cos = rotary(x, position_ids)
        r = spec.rotary_dim
        rot = [modeling.apply_rotary_pos_emb(t.transpose(1, 2)[..., :r], sin, cos).transpose(1, 2) for t in (q, k)]
        q_h, k_h = (torch.cat([t_rot, t[..., r:]], dim=-1) for t_rot, t in zip(rot, (q, k)))
    elif case.output == "complex":  # DeepSeek-V2: complex multiplication of (2i, 2i+1) pairs
        q_h, k_h = modeling.apply_rotary_emb(q, k, rotary(x, position_ids))
    else:
        cos, sin = rotary(x, position_ids)
        if case.family == "deepseek_v3" and spec.layout == "interleaved":
            q_h, k_h = modeling.apply_rotary_pos_emb_interleave(q, k, cos, sin)
            # transformers writes the rotated interleaved pairs back in half order; q and k get the
            # same permutation, so q.k is unchanged.  Spell the permutation out here:
            perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
            q_r, k_r = q_r[..., perm], k_r[..., perm]
        else:
            q_h, k_h = modeling.apply_rotary_pos_emb(q, k, cos, sin)
    _fp32_close(q_r, q_h)
    _fp32_close(k_r, k_h)
    # and the scores the model computes agree, whatever order the dims are stored in
    _fp32_close(
        q_r @ k_r.repeat_interleave(2, 1).transpose(-1, -2), q_h @ k_h.repeat_interleave(2, 1).transpose(-1, -2)
    )


# ---------------------------------------------------------------------------------------------
# random configs (hypothesis): every scaling type with parameters drawn across their ranges
# ---------------------------------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def llama_configs(draw):
    head_dim = draw(st.sampled_from([8, 16, 32, 64, 128]))
    orig = draw(st.integers(min_value=16, max_value=8192))
    max_pos = orig * draw(st.integers(min_value=1, max_value=8))
    kind = draw(st.sampled_from(["default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional"]))
    factor = draw(st.floats(min_value=1.0, max_value=64.0))
    params = {"rope_type": kind, "rope_theta": draw(st.floats(min_value=2.0, max_value=1e7))}
    if kind in ("linear", "dynamic"):
        params["factor"] = factor
    elif kind == "yarn":
        slow = draw(st.floats(min_value=0.25, max_value=4.0))
        params.update(
            factor=factor,
            original_max_position_embeddings=orig,
            beta_slow=slow,
            beta_fast=slow + draw(st.floats(min_value=0.0, max_value=64.0)),
            truncate=draw(st.booleans()),
        )
        if draw(st.booleans()):
            params.update(mscale=draw(st.floats(0.1, 2.0)), mscale_all_dim=draw(st.floats(0.1, 2.0)))
        if draw(st.booleans()):
            params["attention_factor"] = draw(st.floats(0.5, 2.0))
    elif kind == "longrope":
        n = head_dim // 2
        params.update(
            original_max_position_embeddings=orig,
            short_factor=draw(st.lists(st.floats(0.5, 4.0), min_size=n, max_size=n)),
            long_factor=draw(st.lists(st.floats(1.0, 80.0), min_size=n, max_size=n)),
        )
    elif kind == "llama3":
        low = draw(st.floats(min_value=0.5, max_value=2.0))
        params.update(
            factor=factor,
            low_freq_factor=low,
            high_freq_factor=low + draw(st.floats(0.5, 8.0)),
            original_max_position_embeddings=orig,
        )
    elif kind == "proportional":
        params.update(partial_rotary_factor=draw(st.floats(0.0, 1.0)), factor=draw(st.floats(0.5, 4.0)))
    heads = draw(st.sampled_from([1, 2, 4]))
    config = transformers.LlamaConfig(
        hidden_size=head_dim * heads, num_attention_heads=heads, max_position_embeddings=max_pos, rope_parameters=params
    )
    n = draw(st.integers(min_value=1, max_value=2 * max_pos + 1))
    return config, n


@given(llama_configs(), st.integers(0, 2**16))
def test_random_configs_match_transformers(config_and_len, seed):
    config, seq_len = config_and_len
    spec = rk.from_config(config)
    assert rk.from_config(config.to_dict()) == spec
    g = torch.Generator().manual_seed(seed)
    positions = torch.unique(torch.cat([torch.randint(0, seq_len, (64,), generator=g), torch.tensor([seq_len - 1])]))
    rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    hf_cos, hf_sin = rotary(torch.zeros(1), positions[None, :])
    cos, sin = rk.cos_sin(spec, positions, precision="hf")
    half = hf_cos.shape[-1] // 2
    assert _ulps(cos, hf_cos[0, :, :half]) <= 2 and _ulps(sin, hf_sin[0, :, :half]) <= 2
