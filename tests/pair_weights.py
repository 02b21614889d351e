"""q/k projection weights with a known rotation-pair structure, for the layout detector's tests.

For a true rotation pair (a, b) the key rows are the query rows turned by 90 degrees
(``k_a = q_b``, ``k_b = -q_a``): the q/k coupling of the pair is a pure rotation generator, the
structure trained RoPE weights have.  Every other key row is independent noise."""

import torch

from ropekit.layouts import pair_dims


def pair_structured_qk(layout: str, rotary_dim: int, n_heads: int, head_dim: int, hidden: int, seed: int = 0):
    """(w_q, w_k), each [n_heads * head_dim, hidden], pairs of ``layout`` over the first ``rotary_dim`` dims."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_heads, head_dim, hidden, generator=g)
    k = torch.randn(n_heads, head_dim, hidden, generator=g)
    for a, b in pair_dims(layout, rotary_dim):
        k[:, a], k[:, b] = q[:, b], -q[:, a]
    return q.reshape(n_heads * head_dim, hidden), k.reshape(n_heads * head_dim, hidden)
