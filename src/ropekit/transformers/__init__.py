"""The transformers boundary: a drop-in rotary module and a model patcher.

- ``rotary_embedding``: :class:`ropekit.RotaryEmbedding`, a transformers-compatible rotary module
  backed by ropekit's exact tables (no float buffers for ``model.to(bfloat16)`` to round);
- ``patch``: ``patch(model)`` / ``unpatch(model)`` (also reachable as ``ropekit.hf``).

This package knows nothing of kernels: it calls the public rotation (``ropekit.apply``).
"""
