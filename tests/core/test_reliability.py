"""Hostile inputs to the core, one test per defect: each call refuses with one short ropekit
error naming the parameter (or computes the right thing), never a raw traceback, a crash or a
silently wrong result."""

import sys

import pytest
import torch

import ropekit as rk
from ropekit import permute

from oracle import assert_close_to, rope_fp64


def _refused(error, call, *words):
    with pytest.raises(error) as info:
        call()
    msg = str(info.value)
    assert len(msg) < 500, f"{len(msg)} characters"
    for w in words:
        assert w in msg, msg
    return info.value


@pytest.fixture
def tables():
    return rk.cos_sin(rk.RopeSpec(head_dim=8), 16)


# --- errors: one class per kind ----------------------------------------------------------------


def test_error_kinds():
    assert not issubclass(rk.MissingDependencyError, ValueError)
    assert issubclass(rk.MissingDependencyError, ImportError)
    assert not issubclass(rk.RopeError, ValueError)
    for kind in (
        rk.RopeSpecError,
        rk.RopeShapeError,
        rk.RopePositionError,
        rk.RopeArgumentError,
        rk.RopeCheckpointError,
    ):
        assert issubclass(kind, ValueError) and issubclass(kind, rk.RopeError)
    assert issubclass(rk.RopeTypeError, TypeError) and issubclass(rk.RopeTypeError, rk.RopeArgumentError)
    assert issubclass(rk.RopeSpecTypeError, TypeError) and issubclass(rk.RopeSpecTypeError, rk.RopeSpecError)


def test_missing_triton_is_a_missing_dependency(monkeypatch, tables):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    _refused(rk.MissingDependencyError, lambda: rk.apply_rope(torch.randn(1, 4, 1, 8), *tables, backend="triton"),
             "ropekit[triton]")  # fmt: skip


def test_argument_errors_are_not_shape_errors(tables):
    x = torch.randn(1, 4, 1, 8)
    err = _refused(rk.RopeArgumentError, lambda: rk.apply_rope(x, *tables, format="sbhd"), "format='sbhd'")
    assert not isinstance(err, rk.RopeShapeError)
    _refused(rk.RopeArgumentError, lambda: rk.apply_rope(x, *tables, backend="magic"), "backend='magic'")
    _refused(rk.RopeTypeError, lambda: rk.apply_rope("x", *tables), "torch.Tensor")


# --- API: keyword-only after sin, n_kv_heads derived ----------------------------------------------


def test_everything_after_sin_is_keyword_only(tables):
    x = torch.randn(1, 4, 1, 8)
    with pytest.raises(TypeError):
        rk.apply_rope(x, *tables, "half")
    with pytest.raises(TypeError):
        rk.apply_rope_qk(x, x.clone(), *tables, "half")
    with pytest.raises(TypeError):
        rk.apply_rope_qkv(torch.randn(1, 4, 3, 8), *tables, 1, 1)


def test_qkv_derives_the_missing_head_count(tables):
    qkv = torch.randn(2, 4, 4 + 2 * 2, 8)
    want = rk.apply_rope_qkv(qkv, *tables, n_q_heads=4, n_kv_heads=2)
    assert torch.equal(rk.apply_rope_qkv(qkv, *tables, n_q_heads=4), want)
    assert torch.equal(rk.apply_rope_qkv(qkv, *tables, n_kv_heads=2), want)
    flat = qkv.flatten(-2)
    got = rk.apply_rope_qkv(flat, spec=rk.RopeSpec(head_dim=8), n_q_heads=4)  # spec gives head_dim
    assert torch.allclose(got, want.flatten(-2), atol=1e-6)
    _refused(rk.RopeArgumentError, lambda: rk.apply_rope_qkv(flat, *tables, n_q_heads=4), "n_kv_heads")
    _refused(rk.RopeShapeError, lambda: rk.apply_rope_qkv(qkv, *tables, n_q_heads=5), "8 heads")


# --- in place and aliasing --------------------------------------------------------------------


def test_qk_same_tensor_in_place_is_refused(tables):
    q = torch.randn(1, 4, 2, 8)
    before = q.clone()
    _refused(rk.RopeArgumentError, lambda: rk.apply_rope_qk(q, q, *tables, inplace=True), "share memory")
    assert torch.equal(q, before), "refused before touching anything"


def test_overlapping_qk_views_in_place_are_refused(tables):
    buf = torch.randn(1, 4, 5, 8)
    _refused(
        rk.RopeArgumentError,
        lambda: rk.apply_rope_qk(buf[:, :, :3], buf[:, :, 2:4], *tables, inplace=True),
        "share memory",
    )


def test_disjoint_qk_views_of_one_buffer_rotate_in_place(tables):
    buf = torch.randn(1, 4, 5, 8)
    q, k = buf[:, :, :3], buf[:, :, 3:]
    want_q, want_k = rk.apply_rope_qk(q.clone(), k.clone(), *tables)
    rk.apply_rope_qk(q, k, *tables, inplace=True)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)


def test_expanded_x_in_place_is_refused(tables):
    x = torch.randn(1, 4, 1, 8).expand(1, 4, 3, 8)
    _refused(rk.RopeArgumentError, lambda: rk.apply_rope(x, *tables, inplace=True), "inplace=True", "expanded")
    # out of place an expanded input is fine
    y = rk.apply_rope(x, *tables)
    assert torch.equal(y, rk.apply_rope(x.contiguous(), *tables))


# --- flags, cu_seqlens, offsets ---------------------------------------------------------------


@pytest.mark.parametrize("flag", ["inverse", "inplace"])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_flags_must_be_bools(tables, flag, value):
    x = torch.randn(1, 4, 1, 8)
    _refused(rk.RopeTypeError, lambda: rk.apply_rope(x, *tables, **{flag: value}), f"{flag}={value!r}")


def test_cu_seqlens_outside_thd_is_refused(tables):
    x = torch.randn(1, 4, 1, 8)
    _refused(rk.RopeArgumentError, lambda: rk.apply_rope(x, *tables, cu_seqlens=torch.tensor([0, 2, 4])), "thd")


def test_cu_seqlens_is_checked_with_positions(tables):
    x = torch.randn(4, 1, 8)
    kw = dict(format="thd", positions=torch.arange(4), cu_seqlens=torch.tensor([0, 2, 9]))
    _refused(rk.RopeShapeError, lambda: rk.apply_rope(x, *tables, **kw), "cu_seqlens", "token count 4")


def test_long_cu_seqlens_message_is_bounded(tables):
    x = torch.randn(4, 1, 8)
    cu = torch.arange(0, 10**6, 3)  # does not end at 4
    _refused(rk.RopeShapeError, lambda: rk.apply_rope(x, *tables, format="thd", cu_seqlens=cu), "cu_seqlens")


@pytest.mark.parametrize("name", ["offsets", "cu_seqlens"])
def test_string_offsets_and_cu_seqlens(tables, name):
    x = torch.randn(4, 1, 8)
    _refused(rk.RopeTypeError, lambda: rk.apply_rope(x, *tables, format="thd", **{name: "0,4"}), name)


def test_bool_offset_is_not_one(tables):
    _refused(rk.RopeTypeError, lambda: rk.apply_rope(torch.randn(1, 4, 1, 8), *tables, offsets=True), "offsets")


# --- tensors the kernels cannot rotate ----------------------------------------------------------


def test_zero_dim_and_fp8_inputs(tables):
    _refused(rk.RopeShapeError, lambda: rk.apply_rope(torch.tensor(1.0), *tables), "0-d")
    fp8 = torch.randn(1, 4, 1, 8).to(torch.float8_e4m3fn)
    _refused(rk.RopeShapeError, lambda: rk.apply_rope(fp8, *tables), "float8_e4m3fn")
    _refused(rk.RopeShapeError, lambda: rk.apply_rope_qk(fp8, fp8.clone(), *tables), "float8_e4m3fn")


# --- specs, frequencies, tables -----------------------------------------------------------------


def test_unhashable_scaling_kind():
    _refused(rk.RopeSpecError, lambda: rk.RopeSpec(head_dim=8, scaling={"kind": ["yarn"]}), "scaling.kind")


def test_longrope_original_one():
    spec = rk.RopeSpec(head_dim=4, scaling=rk.LongRope((1.0, 1.0), (1.0, 1.0), 1, factor=2.0))
    _refused(rk.RopeSpecError, lambda: rk.inv_freq(spec), "original_max_position_embeddings=1")


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: rk.RopeSpec(head_dim=2**40), ["head_dim="]),
        (lambda: rk.RopeSpec(head_dim=8, base=10**400), ["base="]),
        (lambda: rk.RopeSpec(head_dim=8, max_position_embeddings=10**30), ["max_position_embeddings="]),
        (lambda: rk.Yarn(factor=2.0, original_max_position_embeddings=10**400), ["original_max_position_embeddings"]),
    ],
)
def test_huge_numbers_in_specs(make, words):
    _refused(rk.RopeSpecError, make, *words)


@pytest.mark.parametrize("factor", [1e300, 1e308])  # OverflowError in Python floats / an infinite base
def test_dynamic_with_a_huge_factor(factor):
    spec = rk.RopeSpec(head_dim=8, scaling=rk.Dynamic(factor=factor, original_max_position_embeddings=16))
    _refused(rk.RopeSpecError, lambda: rk.cos_sin(spec, 64), "frequencies")


@pytest.mark.parametrize(
    "spec, precision",
    [
        (rk.RopeSpec(head_dim=8, attention_factor=1e308), "exact"),
        (
            rk.RopeSpec(
                head_dim=8,
                scaling=rk.Yarn(factor=4.0, original_max_position_embeddings=16, mscale=1e300, mscale_all_dim=1.0),
            ),
            "exact",
        ),
        (rk.RopeSpec(head_dim=8, base=1e-300), "hf"),
    ],
)
def test_specs_giving_non_finite_tables_are_refused(spec, precision):
    _refused(rk.RopeSpecError, lambda: rk.cos_sin(spec, 8, precision=precision))


def test_two_to_the_31_positions_refused_before_allocating():
    spec = rk.RopeSpec(head_dim=8)
    _refused(rk.RopePositionError, lambda: rk.cos_sin(spec, 2**31), "2147483648")
    _refused(rk.RopePositionError, lambda: rk.cos_sin(spec, range(2**31)), "positions")


@pytest.mark.parametrize("kind", ["meta", "uint64", "sparse", "bool"])
def test_cos_sin_positions_that_are_not_positions(kind):
    values = torch.tensor([0, 1, 2])
    pos = {
        "meta": values.to("meta"),
        "uint64": values.to(torch.uint64),
        "sparse": values.to_sparse(),
        "bool": values.bool(),
    }[kind]
    _refused(rk.RopePositionError, lambda: rk.cos_sin(rk.RopeSpec(head_dim=8), pos), "positions")


@pytest.mark.parametrize("device", ["bogus", "cuda:7", "meta"])
def test_cos_sin_bogus_devices(device):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    _refused(rk.RopeArgumentError, lambda: rk.cos_sin(rk.RopeSpec(head_dim=8), 4, device=device), "device=")


def test_float_scalar_positions():
    _refused(rk.RopeTypeError, lambda: rk.cos_sin(rk.RopeSpec(head_dim=8), 3.5), "positions=3.5")


# --- permute helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda w: permute.permute_neox_qkv(w, n_heads=1, head_dim=8, rotary_dim=7),
        lambda w: permute.permute_neox_qkv(w, n_heads=1, head_dim=8, rotary_dim=10),
        lambda w: permute.permute_phi3_qkv(w, n_heads=1, n_kv_heads=1, head_dim=8, rotary_dim="4"),
        lambda w: permute.permute_glm_qkv(w, n_heads=1, n_kv_heads=1, head_dim=8, rotary_dim=-2),
        lambda w: permute.permute_mla_q(w, n_heads=1, qk_nope_head_dim=21, qk_rope_head_dim=3),
        lambda w: rk.permute_qk(w[:8], n_heads=1, head_dim=8, rotary_dim=2.0),
    ],
)
def test_permute_helpers_with_bad_rotary_dim(call):
    _refused(rk.RopeShapeError, lambda: call(torch.randn(24, 4)), "dim=")


# --- the ulp tolerance itself ---------------------------------------------------------------------


def test_reference_rotation_meets_the_ulp_bound():
    spec = rk.RopeSpec(head_dim=64)
    cos, sin = rk.cos_sin(spec, 64)
    inv = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    x = torch.randn(2, 64, 3, 64).to(torch.bfloat16)
    assert_close_to(rk.apply_rope(x, cos, sin), rope_fp64(x, inv, torch.arange(64)[None].expand(2, 64), "half"))
