"""How a transformers family hands its tables over: the one home of that knowledge.

Every family's rotary module returns cos/sin in a form its own apply function expects:

* ``"cat"``: ``cat((c, c))`` on the last axis (almost every family, and GLM, whose apply
  function re-interleaves the first half itself);
* ``"repeat"``: ``repeat_interleave(c, 2)`` (Cohere, Cohere2, ERNIE-4.5-VL);
* ``"sin_cos"``: one column per pair, returned as ``(sin, cos)`` (GPT-J, CodeGen);
* ``"complex"``: one complex tensor ``cos + i sin`` (DeepSeek-V2's ``freqs_cis``).

Multimodal (mRoPE) families in releases before 5.0 return one cat-form table per position axis,
``[3, batch, seq, rotary_dim]``, and leave the section selection to ``apply_multimodal_rotary_pos_emb``
(``per_axis``); from 5.0 the rotary module selects the sections itself.

Every family's rotary module returns the tables of +angle; a family whose rotation turns by
-angle (NanoChat, ``angle_sign=-1``) does so in its apply function, so its form says
``direction_in_apply``: ``RotaryEmbedding(config)`` then hands over +angle tables, as the family's
own module does, while ``RotaryEmbedding(spec=...)`` (no family) negates sin for such a spec.

``table_form(family)`` answers for a family name (a config's ``model_type``) and the installed
release; ``RotaryEmbedding(config)`` and ``ropekit.hf.patch`` both ask it, so the module a user
swaps in and the one the patcher installs always agree with the family's own apply function.

>>> table_form("cohere").duplicate, table_form("llama").duplicate, table_form("nanochat").direction_in_apply
('repeat', 'cat', True)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

__all__ = ["TableForm", "table_form", "DUPLICATES", "family_name", "widened"]

DUPLICATES = ("cat", "repeat", "sin_cos", "complex")


def widened(table, duplicate: str):
    """A compact table (one column per pair) in the two-columns-per-pair form ``duplicate``
    (``"cat"`` or ``"repeat"``), as the family's rotary module returns it."""
    return torch.cat((table, table), -1) if duplicate == "cat" else table.repeat_interleave(2, -1)


#: families whose rotary module repeats columns (pairs are adjacent: the interleaved layout)
_REPEAT = frozenset({"cohere", "cohere2", "ernie4_5_vl_moe"})
#: families whose tables are (sin, cos), one column per pair
_SIN_COS = frozenset({"gptj", "codegen"})
#: families whose tables are one complex tensor
_COMPLEX = frozenset({"deepseek_v2"})
#: text-tower config names of multimodal families -> the family whose modeling code runs them
_TEXT_OF = {
    "gemma3_text": "gemma3",
    "qwen2_vl_text": "qwen2_vl",
    "qwen2_5_vl_text": "qwen2_5_vl",
    "qwen3_vl_text": "qwen3_vl",
    "qwen3_vl_moe_text": "qwen3_vl_moe",
    "ernie4_5_vl_moe_text": "ernie4_5_vl_moe",
}


@dataclass(frozen=True)
class TableForm:
    """The shape of the tables a family's rotary module returns (see the module docstring)."""

    duplicate: str = "cat"
    per_axis: bool = False  # mRoPE before 5.0: one table per position axis, sections applied later
    #: the apply function the tables feed turns by the spec's direction itself (a transformers
    #: family's): the tables are the +angle ones whatever ``spec.angle_sign`` says
    direction_in_apply: bool = False

    def __post_init__(self):
        if self.duplicate not in DUPLICATES:
            from ..errors import RopeSpecError

            raise RopeSpecError(f"duplicate={self.duplicate!r} must be one of {DUPLICATES}")


def family_name(model_type: str | None) -> str | None:
    """The modeling family of a config's ``model_type`` (a text tower maps to its model)."""
    if model_type is None:
        return None
    return _TEXT_OF.get(model_type, model_type)


def _modeling(family: str):
    try:
        return importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    except ImportError:
        return None


def table_form(model_type: str | None) -> TableForm:
    """The table form of ``model_type`` under the installed transformers release."""
    family = family_name(model_type)
    if family in _REPEAT:
        return TableForm("repeat", direction_in_apply=True)
    if family in _SIN_COS:
        return TableForm("sin_cos", direction_in_apply=True)
    if family in _COMPLEX:
        return TableForm("complex", direction_in_apply=True)
    modeling = _modeling(family) if family else None
    # releases before 5.0 select mRoPE sections in apply_multimodal_rotary_pos_emb, after the module
    per_axis = modeling is not None and hasattr(modeling, "apply_multimodal_rotary_pos_emb")
    return TableForm("cat", per_axis=per_axis, direction_in_apply=family is not None)
