"""A built-in catalog of real-world model configs: the RoPE-relevant keys of well-known public
checkpoints, written as the dicts their ``config.json`` / ``params.json`` / LitGPT config hold.

It shows at a glance how differently the field encodes one idea (``ropekit spec --catalog``, drawn by
``dialects.spec_table``), and it
is a ready set of conventions for tools that compare or diagnose (the doctor reuses it).

>>> from ropekit.dialects.catalog import CATALOG, catalog_specs
>>> spec = dict(((name, lt), s) for name, lt, s in catalog_specs())[("GPT-J-6B", None)]
>>> spec.layout, spec.rotary_dim, spec.head_dim
('interleaved', 64, 256)
>>> len(CATALOG) >= 14
True
"""

from __future__ import annotations

from typing import Any

from ..spec import RopeSpec

__all__ = ["CATALOG", "catalog_specs", "catalog_config"]

_LLAMA3_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

# microsoft/Phi-3.5-mini-instruct config.json: 48 factors = head_dim 96 / 2
_PHI35_LONG = [
    1.0800000429153442,
    1.1100000143051147,
    1.1399999856948853,
    1.340000033378601,
    1.5899999141693115,
    1.600000023841858,
    1.6200000047683716,
    2.620000123977661,
    3.2300000190734863,
    3.2300000190734863,
    4.789999961853027,
    7.400000095367432,
    7.700000286102295,
    9.09000015258789,
    12.199999809265137,
    17.670000076293945,
    24.46000099182129,
    28.57000160217285,
    30.420001983642578,
    30.840002059936523,
    32.590003967285156,
    32.93000411987305,
    42.320003509521484,
    44.96000289916992,
    50.340003967285156,
    50.45000457763672,
    57.55000305175781,
    57.93000411987305,
    58.21000289916992,
    60.1400032043457,
    62.61000442504883,
    62.62000274658203,
    62.71000289916992,
    63.1400032043457,
    63.1400032043457,
    63.77000427246094,
    63.93000411987305,
    63.96000289916992,
    63.970001220703125,
    64.02999877929688,
    64.06999969482422,
    64.08000183105469,
    64.12000274658203,
    64.41000366210938,
    64.4800033569336,
    64.51000213623047,
    64.52999877929688,
    64.83999633789062,
]
_PHI35_SHORT = [
    1.0,
    1.0199999809265137,
    1.0299999713897705,
    1.0299999713897705,
    1.0499999523162842,
    1.0499999523162842,
    1.0499999523162842,
    1.0499999523162842,
    1.0499999523162842,
    1.0699999332427979,
    1.0999999046325684,
    1.1099998950958252,
    1.1599998474121094,
    1.1599998474121094,
    1.1699998378753662,
    1.2899998426437378,
    1.339999794960022,
    1.679999828338623,
    1.7899998426437378,
    1.8199998140335083,
    1.8499997854232788,
    1.8799997568130493,
    1.9099997282028198,
    1.9399996995925903,
    1.9899996519088745,
    2.0199997425079346,
    2.0199997425079346,
    2.0199997425079346,
    2.0199997425079346,
    2.0199997425079346,
    2.0199997425079346,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0799996852874756,
    2.0899996757507324,
    2.189999580383301,
    2.2199995517730713,
    2.5899994373321533,
    2.729999542236328,
    2.749999523162842,
    2.8399994373321533,
]


def _deepseek_mla(model_type: str, hidden_size: int, heads: int, mscale: float) -> dict[str, Any]:
    """A DeepSeek-V2/V3 config: both rotate 64 of each MLA head's dims with the same yarn block, and
    differ (for RoPE) only in width, head count and the yarn mscale (= mscale_all_dim)."""
    return {
        "model_type": model_type,
        "hidden_size": hidden_size,
        "num_attention_heads": heads,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "max_position_embeddings": 163840,
        "rope_theta": 10000,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": mscale,
            "mscale_all_dim": mscale,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
    }


#: name -> the RoPE-relevant part of that checkpoint's config file
CATALOG: dict[str, dict[str, Any]] = {
    "Llama-2-7B": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": None,
    },
    "Llama-3.1-8B": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": _LLAMA3_SCALING,
    },
    "Llama-3.1-8B (Meta params.json)": {
        "dim": 4096,
        "n_layers": 32,
        "n_heads": 32,
        "n_kv_heads": 8,
        "vocab_size": 128256,
        "ffn_dim_multiplier": 1.3,
        "multiple_of": 1024,
        "norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "use_scaled_rope": True,
    },
    "Llama-3.1-8B (LitGPT)": {
        "name": "Llama-3.1-8B",
        "block_size": 131072,
        "n_embd": 4096,
        "n_head": 32,
        "n_query_groups": 8,
        "rotary_percentage": 1.0,
        "rope_base": 500000,
        "rope_adjustments": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_seq_len": 8192,
        },
    },
    "Mistral-7B-v0.1": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rope_theta": 10000.0,
    },
    "Qwen2.5-7B-Instruct": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
    },
    "Qwen2-VL-7B-Instruct": {
        "model_type": "qwen2_vl",
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    },
    "Phi-3.5-mini-instruct": {
        "model_type": "phi3",
        "hidden_size": 3072,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "longrope", "long_factor": _PHI35_LONG, "short_factor": _PHI35_SHORT},
    },
    "Phi-2": {
        "model_type": "phi",
        "hidden_size": 2560,
        "num_attention_heads": 32,
        "partial_rotary_factor": 0.4,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
    },
    "GPT-NeoX-20B": {
        "model_type": "gpt_neox",
        "hidden_size": 6144,
        "num_attention_heads": 64,
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "max_position_embeddings": 2048,
    },
    "Pythia-6.9B": {
        "model_type": "gpt_neox",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "max_position_embeddings": 2048,
    },
    "GPT-J-6B": {"model_type": "gptj", "n_embd": 4096, "n_head": 16, "rotary_dim": 64, "n_positions": 2048},
    "GLM-4-9B-Chat": {
        "model_type": "chatglm",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "kv_channels": 128,
        "multi_query_group_num": 2,
        "rope_ratio": 500,
        "original_rope": True,
        "seq_length": 131072,
    },
    "Gemma-3-4B-it": {
        "model_type": "gemma3",
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 2560,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "max_position_embeddings": 131072,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
    },
    "DeepSeek-V3": _deepseek_mla("deepseek_v3", hidden_size=7168, heads=128, mscale=1.0),
    "DeepSeek-V2-Lite": _deepseek_mla("deepseek_v2", hidden_size=2048, heads=16, mscale=0.707),
    "Command-R-v01": {
        "model_type": "cohere",
        "hidden_size": 8192,
        "num_attention_heads": 64,
        "num_key_value_heads": 64,
        "max_position_embeddings": 131072,
        "rope_theta": 8000000.0,
    },
    "gpt-oss-20b": {
        "model_type": "gpt_oss",
        "hidden_size": 2880,
        "num_attention_heads": 64,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rope_theta": 150000,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
    },
    # karpathy/nanochat-d32 (transformers' NanoChatConfig): nanochat's depth-32 recipe, 64 wide per
    # layer of depth (2048), 128-dim heads, 2048 context, base 10000; its rotation turns by -angle
    "nanochat-d32": {
        "model_type": "nanochat",
        "hidden_size": 2048,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
}


def catalog_config(name: str) -> dict[str, Any]:
    """The config dict of a catalog entry (case-insensitive name), or KeyError listing the names."""
    for key, value in CATALOG.items():
        if key.lower() == name.lower():
            return value
    raise KeyError(name)


def catalog_specs() -> list[tuple[str, str | None, RopeSpec]]:
    """(name, layer_type, spec) for every entry; per-layer-type configs give one row per type."""
    from . import from_config, layer_types_of

    rows = []
    for name, config in CATALOG.items():
        for layer_type in layer_types_of(config) or [None]:
            rows.append((name, layer_type, from_config(config, layer_type=layer_type)))
    return rows
