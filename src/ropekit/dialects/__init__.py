"""Config dialects -> RopeSpec (transformers v4/v5, GPT-NeoX, GPT-J, GLM, Phi, Gemma, DeepSeek,
Qwen-VL, Meta params.json, LitGPT).  Work in progress: see dialects/hf.py."""

from __future__ import annotations

from ..errors import RopeConfigError

__all__ = ["from_config"]


def from_config(config, layer_type=None, **overrides):
    raise RopeConfigError("from_config is not implemented yet")
