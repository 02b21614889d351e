"""Every backend (Triton under TRITON_INTERPRET=1, the compiled CPU path, the reference) against the
independent fp64 oracle, over a pairwise covering design of layouts x rotary fraction x dtypes x
formats x position forms x in/out of place x inverse x head_dim x odd head counts: every value of
every axis appears, and every pair of values of any two axes appears together."""

import pytest
import torch

import ropekit as rk

from covering import case_id
from kernel_cases import AXES, CASES, CPU_CASES, check_case
from oracle import assert_close_to, rope_fp64


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_triton_matches_oracle(case):
    check_case(case, "triton")


@pytest.mark.parametrize("case", CPU_CASES, ids=[case_id(c) for c in CPU_CASES])
def test_cpu_matches_oracle(case):
    check_case(case, "cpu")


@pytest.mark.parametrize("case", CASES[:6], ids=[case_id(c) for c in CASES[:6]])
def test_reference_through_the_op_matches_oracle(case):
    check_case(case, "reference")


def test_covering_design_covers_every_value_and_pair():
    for name, values in AXES.items():
        assert {repr(c[name]) for c in CASES} == {repr(v) for v in values}, name
        assert {repr(c[name]) for c in CPU_CASES} == {repr(v) for v in values}, name
    names = list(AXES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            seen = {(repr(c[a]), repr(c[b])) for c in CASES}
            assert len(seen) == len(AXES[a]) * len(AXES[b]), (a, b)


@pytest.mark.parametrize("backend", ["triton", "cpu", "reference"])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_inplace_partial_rotary_never_touches_the_tail(backend, layout):
    # NaN payloads in the tail: any read-modify-write of the tail, even an "identity" one through
    # float math, would show up as a changed bit pattern
    spec = rk.RopeSpec(head_dim=64, rotary_dim=16, layout=layout)
    cos, sin = rk.cos_sin(spec, 8)
    x = torch.randn(1, 8, 3, 64)
    x[..., 16:] = torch.tensor(0x7FC0_1234, dtype=torch.int32).view(torch.float32)  # a quiet NaN payload
    x[..., 40:] = -0.0
    before = x[..., 16:].clone().view(torch.int32)
    rk.apply_rope(x, cos, sin, layout=layout, inplace=True, backend=backend)
    assert torch.equal(x[..., 16:].view(torch.int32), before)
    assert torch.isfinite(x[..., :16]).all()


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_fp64_inputs_use_fp64_math(backend):
    spec = rk.RopeSpec(head_dim=32)
    cos, sin = rk.cos_sin(spec, 16, dtype=torch.float64)
    x = torch.randn(2, 16, 3, 32, dtype=torch.float64)
    y = rk.apply_rope(x, cos, sin, backend=backend)
    inv, _ = rk.inv_freq(spec)
    assert_close_to(y, rope_fp64(x, inv, torch.arange(16)[None].expand(2, 16), "half"))


@pytest.mark.parametrize(
    "offsets, match",
    [
        (-1, "position -1"),
        (5, "needs table row 8 but cos/sin have 8 rows"),
        (torch.tensor([0, 5]), "needs table row 8"),
    ],
)
def test_offsets_out_of_the_table_are_clear_errors(offsets, match):
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=8), 8)
    with pytest.raises(rk.RopePositionError, match=match):
        rk.apply_rope(torch.randn(2, 4, 1, 8), cos, sin, offsets=offsets)
