"""The kernel feature matrix (a pairwise covering design) and the check every backend must pass
against the fp64 oracle; shared by the kernel tests."""

import torch

import ropekit as rk

from covering import pairwise
from oracle import assert_close_to, rope_fp64

AXES = dict(
    layout=["half", "interleaved"],
    frac=[1.0, 0.5, 0.25],
    dtype=[torch.float32, torch.bfloat16, torch.float16],
    format=["bshd", "bhsd", "thd"],
    pos=["none", "offset_int", "offsets_per_row", "positions_1d", "positions_2d"],
    inplace=[False, True],
    inverse=[False, True],
    head_dim=[64, 80, 96, 128, 256],
    heads=[1, 3, 5],
)
CASES = pairwise(AXES)


def _cpu_cases():
    """The compiled CPU path pays seconds per compiled variant, so its design is smaller: all pairs
    of the axes that change the generated code (dtype x layout x in place x partial), with every
    value of every other axis spread over those cases (each value still appears)."""
    code_axes = dict(dtype=AXES["dtype"], layout=AXES["layout"], inplace=AXES["inplace"], frac=[1.0, 0.25])
    cases = pairwise(code_axes, seed=1)
    rest = [a for a in AXES if a not in code_axes]
    for i, case in enumerate(cases):
        for a in rest:
            case[a] = AXES[a][i % len(AXES[a])]
    cases[-1]["frac"] = 0.5  # the third rotary fraction
    return [{a: c[a] for a in AXES} for c in cases]


CPU_CASES = _cpu_cases()
B, S, P = 2, 5, 64
LENGTHS = [3, 1, 6]  # thd: three packed sequences


def _make_case(case, seed):
    """x in the caller's format, call kwargs, and the explicit [B, S] positions of the canonical view."""
    g = torch.Generator().manual_seed(seed)
    D, H, fmt = case["head_dim"], case["heads"], case["format"]
    if fmt == "thd":
        T = sum(LENGTHS)
        x4 = torch.randn(1, T, H, D, generator=g, dtype=torch.float64)
        cu = torch.tensor([0, 3, 4, 10])
        within = torch.cat([torch.arange(n) for n in LENGTHS])
        seq = torch.repeat_interleave(torch.arange(3), torch.tensor(LENGTHS))
        kw = {"cu_seqlens": cu}
        form = case["pos"]
        if form == "none":
            pos = within
        elif form == "offset_int":
            kw["offsets"], pos = 7, within + 7
        elif form == "offsets_per_row":
            off = torch.tensor([0, 11, 4])
            kw["offsets"], pos = off, within + off[seq]
        else:  # explicit per-token positions replace cu_seqlens
            del kw["cu_seqlens"]
            pos = torch.randint(0, P, (T,), generator=g)
            kw["positions"] = pos if form == "positions_1d" else pos[None]
        return x4, x4[0], kw, pos[None]
    x4 = torch.randn(B, S, H, D, generator=g, dtype=torch.float64)
    base = torch.arange(S)[None].expand(B, S)
    form, kw = case["pos"], {}
    if form == "none":
        pos = base
    elif form == "offset_int":
        kw["offsets"], pos = 9, base + 9
    elif form == "offsets_per_row":
        off = torch.tensor([3, 20])
        kw["offsets"], pos = off, base + off[:, None]
    elif form == "positions_1d":
        p = torch.randint(0, P, (S,), generator=g)
        kw["positions"], pos = p, p[None].expand(B, S)
    else:
        pos = torch.randint(0, P, (B, S), generator=g)
        kw["positions"] = pos
    x = x4 if fmt == "bshd" else x4.transpose(1, 2).contiguous()
    return x4, x, kw, pos


def _canonical(y, fmt):
    return y[None] if fmt == "thd" else (y.transpose(1, 2) if fmt == "bhsd" else y)


def check_case(case, backend, seed=0):
    D, dtype, layout = case["head_dim"], case["dtype"], case["layout"]
    spec = rk.RopeSpec(head_dim=D, rotary_dim=int(D * case["frac"]) // 2 * 2, layout=layout)
    cos, sin = rk.cos_sin(spec, P)
    x4_64, x64, kw, pos = _make_case(case, seed)
    x = x64.to(dtype)
    tail_before = x[..., spec.rotary_dim :].clone()
    arg = x.clone() if case["inplace"] else x
    y = rk.apply_rope(
        arg,
        cos,
        sin,
        layout=layout,
        format=case["format"],
        inplace=case["inplace"],
        inverse=case["inverse"],
        backend=backend,
        **kw,
    )
    if case["inplace"]:
        assert y is arg
    else:
        assert torch.equal(x, x64.to(dtype)), "out of place must not touch its input"
    assert y.dtype == dtype and y.shape == x.shape
    inv, _ = rk.inv_freq(spec)
    expected = rope_fp64(x4_64.to(dtype), inv, pos, layout, inverse=case["inverse"])
    assert_close_to(_canonical(y, case["format"]), expected, dtype)
    # the pass-through tail is bit-identical (in place: never written)
    assert torch.equal(y[..., spec.rotary_dim :], tail_before)
