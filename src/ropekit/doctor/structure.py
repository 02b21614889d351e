"""structure: from the probe matrix ``M[p, out, j] = fn(e_j, p)[out]`` to rotating pairs.

The stages of ``ropekit.doctor.probe.fingerprint`` that decide whether fn is a pairwise rotation
at all: linearity (random vectors must be predicted by the basis-vector columns), pairing (each
rotating dim has exactly one partner), layout (which pairing, over which dims), and the 2x2 blocks
``af * [[cos, -sin], [sin, cos]]`` with one amplitude for all pairs.  A stage that finds fn is not
a rotation raises :class:`NotARope` with the reason and what it had measured so far.

>>> import torch
>>> M = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
>>> M[:, 0, 1], M[:, 1, 0] = 0.5, -0.5
>>> find_pairs(M, tol=1e-6)
([(0, 1)], 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layouts import pair_dims  # re-exported: the doctor's callers know it from here

__all__ = ["pair_dims", "NotARope", "Blocks", "check_linear", "find_pairs", "layout_of", "rotation_blocks"]


class NotARope(Exception):
    """fn is not a RoPE the doctor can describe: ``reason`` for people, ``fields`` for the result."""

    def __init__(self, reason: str, **fields):
        super().__init__(reason)
        self.reason = reason
        self.fields = fields


def check_linear(M: torch.Tensor, x_rand: torch.Tensor, y_rand: torch.Tensor, eps: float) -> None:
    """Random vectors must be ``M(p) x`` (fn is linear and treats rows independently)."""
    D = M.shape[-1]
    pred = torch.einsum("pod,pkd->pko", M, x_rand)
    scale = x_rand.abs().amax(-1, keepdim=True)
    lin_err = ((y_rand - pred).abs() / (scale * eps)).max().item()
    if lin_err > 16 * D**0.5:
        raise NotARope(
            f"fn is not linear in x (or mixes tokens): a random vector misses the basis-vector prediction by "
            f"{lin_err:.0f} ulps"
        )


def find_pairs(M: torch.Tensor, tol: float) -> tuple[list[tuple[int, int]], float]:
    """(sorted pairs of dims that mix, max misfit of the dims passed through unchanged)."""
    D = M.shape[-1]
    off = M.abs().amax(0)
    off.fill_diagonal_(0)
    partner = [-1] * D
    for j in range(D):
        col = off[:, j]
        top2 = torch.topk(col, 2).values if D > 2 else torch.cat((col.max().view(1), torch.zeros(1)))
        if top2[0] > tol:
            if top2[1] > tol:
                others = (col > tol).nonzero().flatten().tolist()
                raise NotARope(f"dim {j} mixes into several dims {others[:6]}: not a pairwise rotation")
            partner[j] = int(col.argmax())
    for j, k in enumerate(partner):
        if k >= 0 and partner[k] != j:
            raise NotARope(f"dim {j} feeds dim {k} but dim {k} feeds dim {partner[k]}: not a pairwise rotation")
    still = [j for j in range(D) if partner[j] < 0]
    diag_err = (M[:, still, still] - 1).abs().max().item() if still else 0.0
    if still and diag_err > tol:
        j = still[int((M[:, still, still] - 1).abs().amax(0).argmax())]
        raise NotARope(
            f"dim {j} does not rotate but is not passed through either (|fn(e_{j}) - e_{j}| = {diag_err:.3g})"
        )
    pairs = sorted({(min(j, k), max(j, k)) for j, k in enumerate(partner) if k >= 0})
    if not pairs:
        raise NotARope("no dims rotate: fn passes x through unchanged", residual=diag_err, scaling="none")
    return pairs, diag_err


def layout_of(pairs: list[tuple[int, int]]) -> tuple[str | None, list[tuple[int, int]]]:
    """(layout, pairs in frequency order): "half" or "interleaved" over the leading dims, else None."""
    dims = sorted(d for pr in pairs for d in pr)
    r = len(dims)
    if dims != list(range(r)):
        return None, pairs
    for layout in ("half", "interleaved"):  # r == 2 is both layouts; "half" by convention
        expected = pair_dims(layout, r)
        if sorted(pairs) == sorted(expected):
            return layout, expected
    return None, pairs


@dataclass
class Blocks:
    """The 2x2 blocks of the pairs: ``C = af cos``, ``S = af sin`` per position and pair."""

    C: torch.Tensor  # [P, n]
    S: torch.Tensor  # [P, n]
    attention_factor: float
    structure_err: float  # max |M| outside the blocks and the pass-through diagonal
    block_err: float  # max misfit of the blocks' rotation symmetry


def rotation_blocks(M: torch.Tensor, pairs, structure_err: float, tol: float) -> Blocks:
    """The pairs' blocks, checked to be rotations with one amplitude."""
    D = M.shape[-1]
    a = torch.tensor([pr[0] for pr in pairs])
    b = torch.tensor([pr[1] for pr in pairs])
    Maa, Mbb, Mab, Mba = M[:, a, a], M[:, b, b], M[:, a, b], M[:, b, a]
    block_err = max((Maa - Mbb).abs().max().item(), (Mab + Mba).abs().max().item())
    mask = torch.ones(D, D, dtype=torch.bool)  # everything outside the diagonal and the pair entries
    mask.fill_diagonal_(False)
    mask[a, b] = False
    mask[b, a] = False
    structure_err = max(structure_err, M[:, mask].abs().max().item() if mask.any() else 0.0)
    C, S = (Maa + Mbb) / 2, (Mba - Mab) / 2
    if block_err > 2 * tol:
        i = int(torch.maximum((Maa - Mbb).abs(), (Mab + Mba).abs()).amax(0).argmax())
        raise NotARope(f"dims {pairs[i]} mix but not as a rotation (misfit {block_err:.3g})", residual=block_err)
    amp = torch.sqrt(C * C + S * S)
    af = amp.median().item()
    scaled_tol = tol * max(1.0, af)  # values scale with the attention factor, and so does their rounding
    if (amp - af).abs().max().item() > 2 * scaled_tol * max(1.0, af):
        raise NotARope(
            f"the pairs are scaled unevenly (|cos, sin| from {amp.min():.4g} to {amp.max():.4g})",
            residual=(amp - af).abs().max().item(),
        )
    return Blocks(C, S, af, structure_err, block_err)
