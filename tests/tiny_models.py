"""Tiny transformers models, built offline from configs, for every family the patcher covers.

One set of keyword arguments per family works on every release in the matrix (4.37.2 ... 5.x):
a config class ignores nothing it does not know (unknown keys become attributes), and the sizes
are small enough that a forward and backward pass costs milliseconds.  ``build(family)`` returns
``(model, input_ids)`` or None when the installed release has no such family; ``config_for`` the
config alone.  Keyword overrides replace the family's sizes for tests that need other ones (larger
weights, one kv head, a rotary fraction): every test that needs a tiny transformers model builds it
here, so a release that renames a config key is fixed once.
"""

from __future__ import annotations

import importlib

import torch

#: the families ropekit.hf.patch must reach (issue 9), in the order tests report them
PATCH_FAMILIES = (
    "llama mistral mixtral qwen2 qwen2_moe qwen3 qwen3_moe gemma gemma2 gemma3 phi phi3 gpt_neox gptj codegen "
    "glm glm4 cohere cohere2 deepseek_v2 deepseek_v3 qwen2_vl qwen2_5_vl olmo olmo2 starcoder2 granite stablelm "
    "falcon persimmon nanochat"
).split()

VOCAB = 64

#: the smallest Llama config.json the release tests read: every release builds and validates it
TINY_LLAMA_JSON = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": 1,
    "vocab_size": 32,
    "max_position_embeddings": 2048,
}
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)
_GPTJ = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256, n_inner=64)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
_DEEPSEEK = dict(
    kv_lora_rank=16,
    q_lora_rank=None,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    n_shared_experts=1,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
    num_key_value_heads=4,
)
_VL_TEXT = dict(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, num_key_value_heads=4)

KWARGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    "qwen2": {},
    "qwen2_moe": _MOE,
    "qwen3": dict(head_dim=16),
    "qwen3_moe": dict(_MOE, head_dim=16),
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    "gemma3_text": dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=16, sliding_window_pattern=2),
    "phi": dict(partial_rotary_factor=0.5),
    "phi3": dict(original_max_position_embeddings=256),
    "gpt_neox": dict(rotary_pct=0.25, use_parallel_residual=True),
    "gptj": _GPTJ,
    "codegen": dict(_GPTJ, n_ctx=256),
    "glm": dict(head_dim=16, partial_rotary_factor=0.5),
    "glm4": dict(head_dim=16, partial_rotary_factor=0.5),
    "cohere": {},
    "cohere2": dict(sliding_window=8, sliding_window_pattern=2),
    "deepseek_v2": _DEEPSEEK,
    "deepseek_v3": _DEEPSEEK,
    "qwen2_vl": _VL_TEXT,
    "qwen2_5_vl": _VL_TEXT,
    "olmo": {},
    "olmo2": {},
    "starcoder2": dict(sliding_window=None),
    "granite": {},
    "stablelm": dict(partial_rotary_factor=0.25),
    "falcon": dict(alibi=False, new_decoder_architecture=True, num_kv_heads=2, parallel_attn=True, ffn_hidden_size=64),
    "persimmon": dict(partial_rotary_factor=0.5),
    "nanochat": {},  # rotate_half by -angle (5.x only)
    # ERNIE-4.5-VL's text tower (5.x): 8 pairs, mrope_section [height, width, time] = [3, 3, 2]
    "ernie4_5_vl_moe_text": dict(
        moe_num_experts=4,
        moe_k=2,
        moe_intermediate_size=[32, 32],
        moe_num_shared_experts=1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [3, 3, 2]},
    ),
}
#: the text-only config of a multimodal family
MODEL_TYPE = {"gemma3": "gemma3_text", "ernie4_5_vl_moe": "ernie4_5_vl_moe_text"}


def transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def has_family(family: str) -> bool:
    try:
        importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    except ImportError:
        return False
    return True


def config_for(family: str, **overrides):
    """The tiny config of ``family`` (eager attention), with ``overrides`` over its sizes."""
    from transformers import CONFIG_MAPPING

    model_type = MODEL_TYPE.get(family, family)
    kwargs = dict(_COMMON, **KWARGS[model_type])
    kwargs.update(overrides)
    if family in ("qwen2_vl", "qwen2_5_vl") and f"{model_type}_text" in CONFIG_MAPPING:
        model_type += "_text"  # 4.5x on: the text tower has its own config class
    if family in ("qwen2_vl", "qwen2_5_vl") and transformers_version() >= (5, 0):
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        kwargs.pop("rope_scaling")
    config = CONFIG_MAPPING[model_type](**kwargs)
    config._attn_implementation = "eager"  # one attention path on every release, deterministic on CPU
    return config


def _model_class(family: str, config):
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    if type(config) in MODEL_MAPPING:  # a multimodal family's text tower (qwen2_vl on 4.57+)
        return MODEL_MAPPING[type(config)]
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    prefix = type(config).__name__[: -len("Config")]
    return getattr(modeling, f"{prefix}Model")  # 4.45 qwen2_vl: Qwen2VLModel is the text tower


def build(family: str, seed: int = 0, seq: int = 12, batch: int = 2, **overrides):
    """A tiny model of ``family`` in eval mode and a batch of token ids, or None if absent."""
    if not has_family(family):
        return None
    config = config_for(family, **overrides)
    torch.manual_seed(seed)
    model = _model_class(family, config)(config).eval()
    ids = torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed + 1))
    return model, ids


def saved(path, family: str = "llama", seed: int = 0, **overrides):
    """``path`` holding a tiny ``family`` model written by save_pretrained (random weights)."""
    model, _ = build(family, seed=seed, **overrides)
    model.save_pretrained(path)
    return path


def output(model, ids) -> torch.Tensor:
    """Logits (causal LMs) or the last hidden state (text towers), in the model's dtype."""
    out = model(input_ids=ids, use_cache=False)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
