"""``measured_axes.pair_axes`` on made-up mRoPE modules whose axis of each pair is known by
construction: the map is found, and every arrangement that is no per-pair map is refused with its
reason (a column no single axis reproduces, axes it cannot tell apart, a pair split across axes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import ropekit as rk
from ropekit.dialects.measured import TABLE_TOL
from ropekit.dialects.measured_axes import pair_axes


class MadeUp(torch.nn.Module):
    """A rotary module whose pair j (first member) turns by ``first(pos)[j]``, second member by
    ``second(pos)[j]``, each a [n] position sequence; tables duplicated by cat, as most families."""

    def __init__(self, spec, first, second=None):
        super().__init__()
        self.spec, self.first, self.second = spec, first, second or first

    def forward(self, x, position_ids):
        pos = position_ids.expand(3, -1, -1)[:, 0]  # [3, n]

        def half(which):
            cols = [rk.cos_sin(self.spec, which(pos, j), precision="hf") for j in range(self.spec.n_pairs)]
            return [torch.stack([c[i][:, j] for j, c in enumerate(cols)], -1) for i in (0, 1)]

        (c1, s1), (c2, s2) = half(self.first), half(self.second)
        return torch.cat((c1, c2), -1)[None], torch.cat((s1, s2), -1)[None]


def _probe(module, section=(2, 1, 1)):
    form = "(cos, sin) duplicated by cat"
    return SimpleNamespace(
        mrope_section=section,
        family="made_up",
        rotary_class=MadeUp,
        module=module,
        layer_type=None,
        form=form,
        config=None,
    )


def _axis(axes):
    return lambda pos, j: pos[axes[j]]


def test_each_pairs_axis_is_found():
    spec = rk.RopeSpec(head_dim=8, layout="interleaved")
    for axes in ((1, 2, 0, 0), (0, 2, 2, 1), (2, 2, 2, 2)):
        assert pair_axes(_probe(MadeUp(spec, _axis(axes))), spec, TABLE_TOL) == axes


def test_a_column_no_single_axis_drives_is_refused():
    spec = rk.RopeSpec(head_dim=8)
    mixed = MadeUp(spec, lambda pos, j: pos[1] + pos[2] if j == 1 else pos[0])
    with pytest.raises(rk.RopeConfigError, match=r"column 1 .*\(pair 1\) is reproduced by no single axis"):
        pair_axes(_probe(mixed), spec, TABLE_TOL)


def test_axes_it_cannot_tell_apart_are_refused():
    """Frequencies so low that every axis's positions give the same column within TABLE_TOL."""
    spec = rk.RopeSpec(head_dim=8, base=1e20)
    with pytest.raises(rk.RopeConfigError, match=r"reproduced by axes \[0, 1, 2\] alike"):
        pair_axes(_probe(MadeUp(spec, _axis((0, 1, 2, 0)))), spec, TABLE_TOL)


def test_a_pair_whose_members_follow_different_axes_is_refused():
    spec = rk.RopeSpec(head_dim=8)
    split = MadeUp(spec, _axis((0, 0, 1, 2)), _axis((0, 2, 1, 2)))
    with pytest.raises(rk.RopeConfigError, match=r"pair 1: columns \(1, 5\) follow axes \[0, 2\]"):
        pair_axes(_probe(split), spec, TABLE_TOL)
