"""The transformers boundary: a drop-in rotary module and a model patcher.

- ``rotary_embedding``: :class:`ropekit.RotaryEmbedding`, a transformers-compatible rotary module
  backed by ropekit's exact tables (no float buffers for ``model.to(bfloat16)`` to round), with the
  pre-4.45 constructor and forward (``legacy``) and old checkpoints' ``inv_freq`` keys
  (``checkpoint_keys``);
- ``forms``: the table form each family's rotary module returns (one home for that fact);
- ``patch``: ``patch(model)`` / ``unpatch(model)`` (also reachable as ``ropekit.hf``), built on
  ``discovery`` (what to change, proven at patch time) and ``rotators`` (the stand-ins for each
  family's apply function).

This package knows nothing of kernels: it calls the public rotation (``ropekit.apply_rope*``).
"""

from .rotary_embedding import DynamicNTKScalingRotaryEmbedding, LinearScalingRotaryEmbedding, RotaryEmbedding

__all__ = ["RotaryEmbedding", "LinearScalingRotaryEmbedding", "DynamicNTKScalingRotaryEmbedding"]
