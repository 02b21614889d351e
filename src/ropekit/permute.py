"""q/k row permutations between RoPE layouts.

A projection ``y = W x`` whose output is rotated in the *interleaved* layout (pairs (2i, 2i+1),
Meta / GPT-J) computes exactly the same attention scores as the projection with its rows
reordered so that the pairs sit at (i, i + r/2) and the output is rotated in the *half* layout
(NeoX / transformers).  Moving a model between the two conventions is therefore a pure row
permutation of W_q, W_k, their biases and the LoRA B matrices that feed them — no arithmetic,
so the result is bit-exact and its inverse is exact too.

Within each head only the first ``rotary_dim`` rows move; the pass-through tail stays put.
Permutations work on any dtype (they index rows, never touch values).

>>> import torch, ropekit as rk
>>> w = torch.arange(8.0)[:, None]           # one head of 8 rows, rows numbered
>>> rk.permute_qk(w, n_heads=1, head_dim=8).flatten().tolist()
[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
>>> rk.permute_qk(w, n_heads=1, head_dim=8, rotary_dim=4).flatten().tolist()
[0.0, 2.0, 1.0, 3.0, 4.0, 5.0, 6.0, 7.0]
"""

from __future__ import annotations

import torch

from .arguments import shape_str
from .errors import RopeShapeError, short_repr
from .layouts import head_row_order, normalize_layout, qk_row_count, stacked_head_order

#: more rows than any projection could have (2**31: int32 row indices in every framework)
MAX_ROWS = 2**31

__all__ = [
    "permute_qk",
    "layout_index",
    "permute_neox_qkv",
    "permute_phi3_qkv",
    "permute_glm_qkv",
    "permute_mla_q",
    "permute_mla_kv_a",
]


def layout_index(rotary_dim: int, src: str, dst: str) -> torch.Tensor:
    """Row order that turns ``rotary_dim`` rows in layout ``src`` into layout ``dst``:
    ``rows_dst = rows_src[layout_index(r, src, dst)]``.

    >>> layout_index(6, "interleaved", "half").tolist()
    [0, 2, 4, 1, 3, 5]
    >>> layout_index(6, "half", "interleaved").tolist()
    [0, 3, 1, 4, 2, 5]
    """
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int) or rotary_dim < 0 or rotary_dim % 2:
        raise RopeShapeError(f"rotary_dim={short_repr(rotary_dim)} must be an even int >= 0 (dims rotate in pairs)")
    return torch.tensor(head_row_order(rotary_dim, src, dst), dtype=torch.int64)


def _head_index(
    n_heads: int, head_dim: int, start: int, rotary_dim: int, src: str, dst: str, swap_members: bool = False
) -> torch.Tensor:
    """Row order for ``n_heads`` stacked heads; rows [start, start + rotary_dim) of each head move."""
    order = stacked_head_order(n_heads, head_dim, rotary_dim, src, dst, start, swap_members=swap_members)
    return torch.tensor(order, dtype=torch.int64)


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RopeShapeError(f"{name}={short_repr(value)} must be an integer >= {low}")
    if value > MAX_ROWS:
        raise RopeShapeError(f"{name}={value} is larger than any q/k projection (limit {MAX_ROWS} rows)")
    return value


def _check_rotary_dim(rotary_dim, head_dim: int) -> int:
    """rotary_dim (default head_dim) must be an even int in [0, head_dim]; layouts are checked too."""
    if rotary_dim is None:
        rotary_dim = head_dim
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
        raise RopeShapeError(f"rotary_dim={short_repr(rotary_dim)} must be an integer")
    if rotary_dim < 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise RopeShapeError(f"rotary_dim={rotary_dim} must be even and <= head_dim={head_dim}")
    return rotary_dim


def _check_layouts(src, dst) -> None:
    normalize_layout(src, "src"), normalize_layout(dst, "dst")


def _check_rows(w, n_rows: int, what: str, name: str, hint: str = "") -> None:
    if not isinstance(w, torch.Tensor):
        raise RopeShapeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() == 0:
        raise RopeShapeError(f"{name} is a scalar; q/k weights have one row per output feature")
    if w.shape[0] != n_rows:
        raise RopeShapeError(f"{name} {shape_str(w)} has {w.shape[0]} rows but {what} = {n_rows}{hint}")


def permute_qk(
    w: torch.Tensor,
    n_heads: int,
    head_dim: int,
    rotary_dim: int | None = None,
    src: str = "interleaved",
    dst: str = "half",
    *,
    flip_direction: bool = False,
    name: str = "w",
) -> torch.Tensor:
    """Reorder the output rows of a q or k projection from layout ``src`` to layout ``dst``.

    w: ``[n_heads * head_dim, ...]`` — a weight ``[out, in]``, a bias ``[out]`` or a LoRA B matrix
    ``[out, rank]``; rows are heads x head_dim, as in every framework we know.
    n_heads: heads *of this tensor*: ``num_attention_heads`` for q, ``num_key_value_heads`` for k
    (GQA/MQA).  A wrong count fails loudly because the rows no longer match.
    rotary_dim: leading dims of each head that rotate (default head_dim); the rest stay in place.
    flip_direction: also swap the two members of every pair, which turns a projection rotated by
    -angle (NanoChat, ``angle_sign=-1``) into one rotated by +angle with the same attention scores
    (``R(-a) = S R(a) S``), and back; apply it to q and k alike.
    Returns a new tensor (``src == dst`` returns a copy); ``permute_qk(permute_qk(w, ..., a, b),
    ..., b, a)`` is ``w`` bit for bit.

    >>> import torch, ropekit as rk
    >>> wk = torch.randn(2 * 64, 512)                  # 2 kv heads of 64 dims
    >>> wk_half = rk.permute_qk(wk, n_heads=2, head_dim=64)
    >>> torch.equal(rk.permute_qk(wk_half, 2, 64, src="half", dst="interleaved"), wk)
    True
    >>> swapped = rk.permute_qk(wk, 2, 64, src="half", dst="half", flip_direction=True)  # -angle -> +angle
    >>> again = rk.permute_qk(swapped, 2, 64, src="half", dst="half", flip_direction=True)
    >>> torch.equal(swapped[:32], wk[32:64]), torch.equal(again, wk)
    (True, True)
    >>> rk.permute_qk(wk, n_heads=8, head_dim=64)
    Traceback (most recent call last):
    ...
    ropekit.errors.RopeShapeError: w [128, 512] has 128 rows but n_heads * head_dim = 8 * 64 = 512;
        for k pass num_key_value_heads
    """
    n_heads = _check_int("n_heads", n_heads)
    head_dim = _check_int("head_dim", head_dim)
    rotary_dim = _check_rotary_dim(rotary_dim, head_dim)
    _check_layouts(src, dst)
    # the parameter is n_heads for q and for k alike: count rows as for q
    _check_rows(w, *qk_row_count("q", n_heads, n_heads, head_dim), name, "; for k pass num_key_value_heads")
    index = _head_index(n_heads, head_dim, 0, rotary_dim, src, dst, flip_direction)
    return w.index_select(0, index.to(w.device))


# ---------------------------------------------------------------------------------------------
# fused projections: each knows where q and k sit among the rows
# ---------------------------------------------------------------------------------------------


def permute_neox_qkv(w, n_heads: int, head_dim: int, rotary_dim=None, src="interleaved", dst="half", *, name="w"):
    """GPT-NeoX / Pythia ``query_key_value``: rows are per head ``[q_h, k_h, v_h]``
    (``n_heads * 3 * head_dim``); q and k of every head move, v stays.

    >>> import torch
    >>> w = torch.arange(12.0)  # 1 head, head_dim 4: q rows 0-3, k rows 4-7, v rows 8-11
    >>> permute_neox_qkv(w, n_heads=1, head_dim=4).tolist()
    [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    """
    n_heads, head_dim = _check_int("n_heads", n_heads), _check_int("head_dim", head_dim)
    rotary_dim = _check_rotary_dim(rotary_dim, head_dim)
    _check_layouts(src, dst)
    _check_rows(w, *qk_row_count("qkv_neox", n_heads, n_heads, head_dim), name)
    # view the rows as 2 * n_heads "heads" of q/k plus v blocks: permute q and k, keep v
    rows = torch.arange(3 * n_heads * head_dim).view(n_heads, 3, head_dim)
    qk = rows[:, :2].reshape(2 * n_heads * head_dim)
    qk = qk[_head_index(2 * n_heads, head_dim, 0, rotary_dim, src, dst)].view(n_heads, 2, head_dim)
    index = torch.cat((qk, rows[:, 2:]), dim=1).flatten()
    return w.index_select(0, index.to(w.device))


def _concat_qkv(w, n_heads, n_kv_heads, head_dim, rotary_dim, src, dst, name):
    n_heads, n_kv_heads = _check_int("n_heads", n_heads), _check_int("n_kv_heads", n_kv_heads)
    head_dim = _check_int("head_dim", head_dim)
    rotary_dim = _check_rotary_dim(rotary_dim, head_dim)
    _check_layouts(src, dst)
    total, what = qk_row_count("qkv_concat", n_heads, n_kv_heads, head_dim)
    _check_rows(w, total, what, name)
    # q heads then k heads are one run of n_heads + n_kv_heads heads; v follows untouched
    qk = _head_index(n_heads + n_kv_heads, head_dim, 0, rotary_dim, src, dst)
    index = torch.cat((qk, torch.arange(qk.numel(), total)))
    return w.index_select(0, index.to(w.device))


def permute_phi3_qkv(w, n_heads, n_kv_heads, head_dim, rotary_dim=None, src="interleaved", dst="half", *, name="w"):
    """Phi-3 ``qkv_proj``: rows ``[q (n_heads * head_dim), k (n_kv_heads * head_dim), v (...)]``.

    >>> import torch
    >>> permute_phi3_qkv(torch.arange(12.0), n_heads=1, n_kv_heads=1, head_dim=4).tolist()
    [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    """
    return _concat_qkv(w, n_heads, n_kv_heads, head_dim, rotary_dim, src, dst, name)


def permute_glm_qkv(w, n_heads, n_kv_heads, head_dim, rotary_dim=None, src="interleaved", dst="half", *, name="w"):
    """ChatGLM2/3 and GLM-4 ``query_key_value``: rows ``[q, k, v]`` concatenated like Phi-3, with
    ``n_kv_heads = multi_query_group_num``; ChatGLM rotates only ``rotary_dim = head_dim / 2``
    (interleaved), so pass that.

    >>> import torch
    >>> permute_glm_qkv(torch.arange(16.0), n_heads=2, n_kv_heads=1, head_dim=4, rotary_dim=2,
    ...                 src="half", dst="half").tolist() == list(range(16))
    True
    """
    return _concat_qkv(w, n_heads, n_kv_heads, head_dim, rotary_dim, src, dst, name)


def permute_mla_q(w, n_heads, qk_nope_head_dim, qk_rope_head_dim, src="interleaved", dst="half", *, name="w"):
    """DeepSeek-V2/V3 MLA ``q_b_proj`` (or ``q_proj``): each head is ``[nope, rope]``; only the
    trailing ``qk_rope_head_dim`` rows of each head rotate, so only they move.

    >>> import torch
    >>> permute_mla_q(torch.arange(6.0), n_heads=1, qk_nope_head_dim=2, qk_rope_head_dim=4).tolist()
    [0.0, 1.0, 2.0, 4.0, 3.0, 5.0]
    """
    n_heads = _check_int("n_heads", n_heads)
    nope, rope = (
        _check_int("qk_nope_head_dim", qk_nope_head_dim, low=0),
        _check_int("qk_rope_head_dim", qk_rope_head_dim),
    )
    if rope % 2:
        raise RopeShapeError(f"qk_rope_head_dim={rope} must be even (dims rotate in pairs)")
    head_dim = nope + rope
    _check_layouts(src, dst)
    _check_rows(w, n_heads * head_dim, f"n_heads * (nope + rope) = {n_heads} * ({nope} + {rope})", name)
    index = _head_index(n_heads, head_dim, nope, rope, src, dst)
    return w.index_select(0, index.to(w.device))


def permute_mla_kv_a(w, kv_lora_rank, qk_rope_head_dim, src="interleaved", dst="half", *, name="w"):
    """DeepSeek-V2/V3 MLA ``kv_a_proj_with_mqa``: rows ``[compressed kv (kv_lora_rank), k_rope
    (qk_rope_head_dim, one head shared by all)]``; only the k_rope rows move.

    >>> import torch
    >>> permute_mla_kv_a(torch.arange(6.0), kv_lora_rank=2, qk_rope_head_dim=4).tolist()
    [0.0, 1.0, 2.0, 4.0, 3.0, 5.0]
    """
    rank, rope = _check_int("kv_lora_rank", kv_lora_rank, low=0), _check_int("qk_rope_head_dim", qk_rope_head_dim)
    if rope % 2:
        raise RopeShapeError(f"qk_rope_head_dim={rope} must be even (dims rotate in pairs)")
    _check_layouts(src, dst)
    _check_rows(w, rank + rope, f"kv_lora_rank + qk_rope_head_dim = {rank} + {rope}", name)
    index = _head_index(1, rank + rope, rank, rope, src, dst)
    return w.index_select(0, index.to(w.device))
