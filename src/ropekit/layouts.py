"""Pair layouts and q/k rows: which dims rotate together, and which checkpoint rows move.

The one home of these facts (torch-free, so the byte-level converter can use them too):

* layout names: ``"half"`` pairs ``(i, i + r/2)`` (NeoX, transformers' rotate_half) and
  ``"interleaved"`` pairs ``(2i, 2i + 1)`` (GPT-J, Meta's complex numbers); ``"neox"`` and
  ``"gptj"`` are accepted as aliases;
* the row order that turns one head's rotary rows from one layout into the other, and (swapping
  the two members of every pair) from rotation by -angle into rotation by +angle;
* the q/k roles of checkpoint tensors and how many rows each role holds.

>>> from ropekit.layouts import normalize_layout, pair_dims, head_row_order
>>> normalize_layout("gptj"), pair_dims("half", 4), pair_dims("interleaved", 4)
('interleaved', [(0, 2), (1, 3)], [(0, 1), (2, 3)])
>>> head_row_order(6, "interleaved", "half"), head_row_order(6, "half", "interleaved")
([0, 2, 4, 1, 3, 5], [0, 3, 1, 4, 2, 5])
"""

from __future__ import annotations

from .errors import RopeArgumentError, RopeShapeError, RopeSpecError, RopeTypeError, short_repr

__all__ = [
    "LAYOUTS",
    "LAYOUT_NAMES",
    "normalize_layout",
    "is_interleaved",
    "pair_dims",
    "head_row_order",
    "stacked_head_order",
    "QK_ROLES",
    "FUSED_QK_ROLES",
    "PERMUTED_ROLES",
    "ROLES",
    "qk_row_count",
]

#: every accepted layout name -> its canonical name
LAYOUTS = {"half": "half", "neox": "half", "interleaved": "interleaved", "gptj": "interleaved"}
#: the canonical names
LAYOUT_NAMES = ("half", "interleaved")


def normalize_layout(layout: str, field_name: str = "layout") -> str:
    """Map ``half|neox`` to ``"half"`` and ``interleaved|gptj`` to ``"interleaved"`` (any case)."""
    if not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise RopeSpecError(
            f"{field_name}={short_repr(layout)} is not a RoPE layout; "
            "use 'half' (alias 'neox') or 'interleaved' (alias 'gptj')"
        )
    return LAYOUTS[layout.lower()]


def is_interleaved(layout: str, field_name: str = "layout") -> bool:
    """True for the interleaved layout (pairs (2i, 2i+1)), False for half."""
    return normalize_layout(layout, field_name) == "interleaved"


def _check_rotary_dim(rotary_dim, field_name: str = "rotary_dim") -> int:
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
        raise RopeTypeError(f"{field_name}={short_repr(rotary_dim)} must be an int")
    if rotary_dim < 0 or rotary_dim % 2:
        raise RopeArgumentError(f"{field_name}={rotary_dim} must be even and >= 0 (dims rotate in pairs)")
    return rotary_dim


def pair_dims(layout: str, rotary_dim: int) -> list[tuple[int, int]]:
    """The (first, second) dims of each rotating pair, in frequency order."""
    n = _check_rotary_dim(rotary_dim) // 2
    if is_interleaved(layout):
        return [(2 * i, 2 * i + 1) for i in range(n)]
    return [(i, i + n) for i in range(n)]


def head_row_order(rotary_dim: int, src: str, dst: str, *, swap_members: bool = False) -> list[int]:
    """Row order that turns ``rotary_dim`` rows in layout ``src`` into layout ``dst``:
    ``rows_dst[i] = rows_src[order[i]]``.  Pair j sits at ``pair_dims(layout, r)[j]`` in either
    layout, so the order lists, for each destination dim, the source dim holding the same pair
    member.  ``swap_members``: each pair's second member goes first.  Rotation by -angle is the
    swap S around rotation by +angle (``R(-a) = S R(a) S``), so rows rotated by -angle (NanoChat,
    ``angle_sign=-1``), swapped, give the same q.k rotated by +angle.

    >>> head_row_order(4, "half", "half", swap_members=True)
    [2, 3, 0, 1]
    """
    src, dst = normalize_layout(src, "src"), normalize_layout(dst, "dst")
    if not isinstance(swap_members, bool):
        raise RopeTypeError(f"swap_members={short_repr(swap_members)} (flip_direction) must be a bool")
    order = [0] * _check_rotary_dim(rotary_dim)
    for (s1, s2), (d1, d2) in zip(pair_dims(src, rotary_dim), pair_dims(dst, rotary_dim)):
        order[d1], order[d2] = (s2, s1) if swap_members else (s1, s2)
    return order


def stacked_head_order(
    n_heads: int, head_dim: int, rotary_dim: int, src: str, dst: str, start: int = 0, *, swap_members: bool = False
) -> list[int]:
    """Row order of ``n_heads`` stacked heads of ``head_dim`` rows; rows ``[start, start +
    rotary_dim)`` of each head change layout (and swap pair members), the others stay."""
    one = list(range(head_dim))
    order = head_row_order(rotary_dim, src, dst, swap_members=swap_members)
    one[start : start + rotary_dim] = [start + r for r in order]
    return [h * head_dim + r for h in range(n_heads) for r in one]


# ---------------------------------------------------------------------------------------------
# q/k roles of checkpoint tensors
# ---------------------------------------------------------------------------------------------

#: tensors that hold the rows of one projection: q has n_heads heads, k has n_kv_heads
QK_ROLES = ("q", "k")
#: fused projections: per head [q_h, k_h, v_h] (GPT-NeoX) or [q; k; v] concatenated (Phi-3)
FUSED_QK_ROLES = ("qkv_neox", "qkv_concat")
#: every role whose rows move when the layout changes
PERMUTED_ROLES = QK_ROLES + FUSED_QK_ROLES
#: every role a checkpoint tensor can have (inv_freq: stored frequencies, never permuted)
ROLES = PERMUTED_ROLES + ("inv_freq",)


def qk_row_count(role: str, n_heads: int, n_kv_heads: int, head_dim: int) -> tuple[int, str]:
    """How many rows a tensor of ``role`` holds, and the formula spelled out for messages.

    >>> qk_row_count("k", 32, 8, 128)
    (1024, 'n_kv_heads * head_dim = 8 * 128')
    """
    if role == "q":
        return n_heads * head_dim, f"n_heads * head_dim = {n_heads} * {head_dim}"
    if role == "k":
        return n_kv_heads * head_dim, f"n_kv_heads * head_dim = {n_kv_heads} * {head_dim}"
    if role == "qkv_neox":
        return 3 * n_heads * head_dim, f"n_heads * 3 * head_dim = {n_heads} * 3 * {head_dim}"
    if role == "qkv_concat":
        return (
            (n_heads + 2 * n_kv_heads) * head_dim,
            f"(n_heads + 2 * n_kv_heads) * head_dim = ({n_heads} + 2 * {n_kv_heads}) * {head_dim}",
        )
    raise RopeShapeError(f"role={role!r} has no q/k rows; roles with rows: {PERMUTED_ROLES}")
