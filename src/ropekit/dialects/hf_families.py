"""The transformers model families ropekit reads from a table: what each does with RoPE beyond
the shared ``modeling_rope_utils`` rules (layout, config-class defaults, mRoPE), read from
transformers 5.x's own ``models/<family>/`` files.  Families outside the table are measured
from their own modeling code (``ropekit.dialects.measured``).

>>> FAMILIES["glm"].layout, family_of({"architectures": ["Qwen2VLForConditionalGeneration"]})
('interleaved', 'qwen2_vl')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Family", "FAMILIES", "TEXT_OF", "family_of"]


@dataclass(frozen=True)
class Family:
    """What a transformers model family does with RoPE, beyond the shared rules.

    layout: which dims pair up in its ``apply_rotary_pos_emb``.
    theta: its config class's default ``rope_theta`` (used only when the config omits it).
    partial: its config class's default ``partial_rotary_factor``.
    head_dim: its config class's default ``head_dim`` (None: hidden_size // num_attention_heads).
    mrope: "contiguous" (Qwen2-VL) or "interleaved" (Qwen3-VL) multimodal RoPE, with its default sections;
      "alternating" (ERNIE-4.5-VL): sections [height, width, time], height and width alternating
      pair by pair, then time (``hf_config.alternating_axes``).
    angle_sign: -1 where its apply function turns pairs by -angle (NanoChat), else 1.
    """

    layout: str
    theta: float = 10000.0
    partial: float = 1.0
    head_dim: int | None = None
    mrope: str | None = None
    mrope_section: tuple[int, ...] | None = None
    angle_sign: int = 1


_HALF = Family("half")
FAMILIES: dict[str, Family] = {
    # rotate_half families (pairs (i, i + r/2))
    **{
        name: _HALF
        for name in (
            "llama",
            "mistral",
            "ministral",
            "qwen2",
            "qwen2_moe",
            "qwen3_moe",
            "olmo",
            "olmo2",
            "starcoder2",
            "granite",
            "granitemoe",
            "falcon",
            "exaone4",
        )
    },
    "mixtral": Family("half", theta=1e6),
    "phimoe": Family("half", theta=1e6),
    "qwen3": Family("half", head_dim=128),
    "gemma": Family("half", head_dim=256),
    "gemma2": Family("half", head_dim=256),
    "gemma3_text": Family("half", theta=1e6, head_dim=256),  # sliding layers: rope_local_base_freq (1e4)
    "phi": Family("half", partial=0.5),
    "phi3": Family("half"),
    "gpt_neox": Family("half", partial=0.25),  # keys rotary_pct / rotary_emb_base
    "stablelm": Family("half", partial=0.25),
    "persimmon": Family("half", theta=25000.0, partial=0.5),
    "nemotron": Family("half", partial=0.5),
    "smollm3": Family("half", theta=2e6),
    "olmo3": Family("half", theta=5e5),
    "gpt_oss": Family("half", theta=150000.0, head_dim=64),
    # its rotate_half is cat((x2, -x1)): pairs (i, i + r/2) turn by -angle (karpathy's nanochat
    # computes y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos); its rotary module returns +angle tables
    "nanochat": Family("half", angle_sign=-1),
    "qwen2_vl_text": Family("half", theta=1e6, mrope="contiguous", mrope_section=(16, 24, 24)),
    "qwen2_5_vl_text": Family("half", theta=1e6, mrope="contiguous", mrope_section=(16, 24, 24)),
    "qwen3_vl_text": Family("half", theta=5e5, head_dim=128, mrope="interleaved", mrope_section=(24, 20, 20)),
    "qwen3_vl_moe_text": Family("half", theta=5e5, head_dim=128, mrope="interleaved", mrope_section=(24, 20, 20)),
    # interleaved families (pairs (2i, 2i + 1))
    # ERNIE-4.5-VL: rotate_half_text pairs (2i, 2i + 1); its tables repeat each column
    "ernie4_5_vl_moe_text": Family("interleaved", theta=5e5, mrope="alternating", mrope_section=(22, 22, 20)),
    "gptj": Family("interleaved"),  # key rotary_dim, base fixed at 10000
    "codegen": Family("interleaved"),
    "glm": Family("interleaved", partial=0.5, head_dim=128),
    "glm4": Family("interleaved", partial=0.5, head_dim=128),
    "cohere": Family("interleaved", theta=5e5),
    "cohere2": Family("interleaved"),
    "helium": Family("interleaved", theta=1e5, head_dim=128),
    # THUDM's remote-code ChatGLM / GLM-4 (modeling_chatglm.py): head_dim = kv_channels, half of it
    # rotates, pairs (2i, 2i+1), base = 10000 * rope_ratio, context = seq_length
    "chatglm": Family("interleaved", partial=0.5),
    "deepseek_v2": Family("interleaved"),  # complex multiplication over qk_rope_head_dim
    # rope_interleave=True (default): weights store the rope dims interleaved; transformers'
    # apply_rotary_pos_emb_interleave rotates pairs (2i, 2i+1) and writes the result in half order,
    # a permutation shared by q and k that leaves q.k unchanged.  rope_interleave=False -> half.
    "deepseek_v3": Family("interleaved"),
}
# composite (multimodal) model types whose text config carries the RoPE
TEXT_OF = {
    "gemma3": "gemma3_text",
    "qwen2_vl": "qwen2_vl_text",
    "qwen2_5_vl": "qwen2_5_vl_text",
    "qwen3_vl": "qwen3_vl_text",
    "qwen3_vl_moe": "qwen3_vl_moe_text",
    "ernie4_5_vl_moe": "ernie4_5_vl_moe_text",
}
# architecture class-name prefixes -> model_type (longest prefix wins)
_ARCH_PREFIX = {
    "Llama": "llama",
    "Mistral": "mistral",
    "Ministral": "ministral",
    "Mixtral": "mixtral",
    "Qwen2": "qwen2",
    "Qwen2Moe": "qwen2_moe",
    "Qwen3": "qwen3",
    "Qwen3Moe": "qwen3_moe",
    "Qwen2VL": "qwen2_vl",
    "Qwen2_5_VL": "qwen2_5_vl",
    "Qwen3VL": "qwen3_vl",
    "Gemma": "gemma",
    "Gemma2": "gemma2",
    "Gemma3": "gemma3",
    "Phi": "phi",
    "Phi3": "phi3",
    "PhiMoE": "phimoe",
    "GPTNeoX": "gpt_neox",
    "StableLm": "stablelm",
    "Persimmon": "persimmon",
    "GPTJ": "gptj",
    "CodeGen": "codegen",
    "Glm": "glm",
    "Glm4": "glm4",
    "Cohere": "cohere",
    "Cohere2": "cohere2",
    "DeepseekV2": "deepseek_v2",
    "DeepseekV3": "deepseek_v3",
    "Olmo": "olmo",
    "Olmo2": "olmo2",
    "Starcoder2": "starcoder2",
    "Granite": "granite",
    "Falcon": "falcon",
    "GptOss": "gpt_oss",
    "Helium": "helium",
    "Nemotron": "nemotron",
    "NanoChat": "nanochat",
    "ChatGLM": "chatglm",
    "Ernie4_5_VLMoe": "ernie4_5_vl_moe",
    "Ernie4_5_VL_Moe": "ernie4_5_vl_moe",
}


def family_of(cfg: dict[str, Any]) -> str | None:
    """The model_type of a config dict (from ``model_type``, else from ``architectures``)."""
    model_type = cfg.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type
    archs = cfg.get("architectures")
    if isinstance(archs, list):
        for arch in archs:
            if not isinstance(arch, str):
                continue
            matches = [p for p in _ARCH_PREFIX if arch.startswith(p)]
            if matches:
                return _ARCH_PREFIX[max(matches, key=len)]
    return None
