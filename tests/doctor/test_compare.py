"""compare flags the seed porting bugs, names the difference, gives the fix and verifies it.

Every expectation is written here from the conventions themselves: which field differs, and an
independent check (this file's own permutation / position shift) that the named fix is the right
one, so a wrong explanation cannot pass by agreeing with itself."""

import json
import math

import pytest
import torch

import ropekit as rk
from ropekit.doctor.probe import spec_rope_fn
from ropekit.zoo import glm_half_head_interleaved, hf_rotate_half, meta_complex, offset_by_one


def _fields(rep):
    return [d.field for d in rep.differences]


def _interleaved_to_half(r, head_dim):
    """Dim order that puts interleaved pair (2i, 2i+1) at (i, i + r/2) (written here, not imported)."""
    idx = torch.cat((torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, head_dim)))
    return idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_meta_complex_vs_rotate_half_fix_is_the_permutation(dtype):
    D = 64
    a, b = hf_rotate_half(D), meta_complex(D)
    rep = rk.compare(a, b, D, dtype=dtype, n_heads=8)
    assert not rep.equivalent
    assert _fields(rep) == ["layout"]
    assert "permute_qk(w, n_heads=8, head_dim=64, rotary_dim=64, src='interleaved', dst='half')" in rep.fix
    # the comparison with the fix applied is re-run and agrees
    assert rep.fix_verified is True and rep.fix_check.equivalent
    assert rep.fix_check.max_ulp_err <= rep.tolerance_ulps < rep.max_ulp_err
    # independently: rotating the permuted vector the transformers way = permuting Meta's result
    idx = _interleaved_to_half(D, D)
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(1))
    p = torch.arange(40) * 997
    torch.testing.assert_close(a(x[:, idx], p), b(x, p)[:, idx], rtol=0, atol=2e-6)


def test_glm_rotary_dim_32_vs_16():
    D = 64
    a, b = glm_half_head_interleaved(D, rotary_dim=32), glm_half_head_interleaved(D, rotary_dim=16)
    rep = rk.compare(a, b, D)
    assert not rep.equivalent and _fields(rep) == ["rotary_dim"]
    assert (rep.differences[0].a, rep.differences[0].b) == (32, 16)
    assert "rotary_dim to 32" in rep.fix and "partial_rotary_factor=0.5" in rep.fix
    assert "2x fewer" in rep.explanation and "applied once" in rep.explanation  # the repeated-factor bug
    assert rep.fix_verified is True


def test_offset_by_one():
    D = 64
    a, b = hf_rotate_half(D), offset_by_one(D)
    rep = rk.compare(a, b, D)
    assert not rep.equivalent and _fields(rep) == ["offset"]
    assert (rep.differences[0].a, rep.differences[0].b) == (0, 1)
    assert "1 position(s) ahead" in rep.fix and "positions - 1" in rep.fix
    assert rep.fix_verified is True
    # independently: B fed p - 1 is A
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(2))
    p = torch.tensor([1, 2, 3, 100, 4096, 4097, 65536, 2**20])
    assert torch.equal(b(x, p - 1), a(x, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_base_10000_vs_500000(dtype):
    D = 128
    a, b = hf_rotate_half(D, 10000.0), hf_rotate_half(D, 500000.0)
    rep = rk.compare(a, b, D, dtype=dtype)
    assert not rep.equivalent and _fields(rep) == ["base"]
    assert (rep.differences[0].a, rep.differences[0].b) == (10000.0, 500000.0)
    assert "rope_theta to 10000" in rep.fix
    assert rep.fix_verified is True
    # the difference shows at short positions already (pair 1 turns at 1e4**-1/64 vs 5e5**-1/64 rad/token)
    assert max(e for p, e in rep.err_by_position if p < 32) > 0.01


def test_equivalent_implementations():
    # transformers' float32 arithmetic written twice (zoo vs ropekit's hf tables): bit-identical
    D = 128
    rep = rk.compare(hf_rotate_half(D), spec_rope_fn(rk.RopeSpec(head_dim=D), precision="hf"), D)
    assert rep.equivalent and rep.max_abs_err <= 1e-6
    assert rep.differences == [] and rep.fix == ""
    assert rep.err_by_position[-1][0] == 2**20  # long positions were checked


def test_precision_only_is_named_not_called_a_bug():
    # float64 angles vs transformers' float32 angles: same spec, differs only at long positions
    D = 128
    spec = rk.RopeSpec(head_dim=D, base=500000.0)
    rep = rk.compare(spec_rope_fn(spec, precision="exact"), hf_rotate_half(D, 500000.0), D)
    assert not rep.equivalent and rep.precision_only
    assert _fields(rep) == ["precision"]
    short = max(e for p, e in rep.err_by_position if p < 32)
    # a few float32 ulps early, float32 angle drift (p * 2**-24 rad) at long positions
    assert short <= 1e-5 and rep.max_abs_err > 100 * short
    assert "precision='exact'" in rep.fix


def test_mean_of_signed_differences_is_not_evidence():
    # Meta vs transformers differ by O(1) per element, yet the signed mean nearly cancels
    D = 64
    rep = rk.compare(hf_rotate_half(D), meta_complex(D), D)
    assert rep.max_abs_err > 1.0
    assert abs(rep.mean_signed_err) < 0.05 * rep.max_abs_err
    text = rep.report(show_mean=True)
    assert f"{rep.mean_signed_err:.3g}" in text and "NOT evidence" in text and "verdict: NOT equivalent" in text
    assert "mean signed" not in rep.report()  # only when asked
    d = rep.to_dict()
    assert d["mean_signed_err"] == rep.mean_signed_err and "not evidence" in d["mean_signed_err_note"]
    json.dumps(d)  # JSON-safe


def test_direction_fix():
    D = 32
    spec = rk.RopeSpec(head_dim=D)
    rep = rk.compare(spec_rope_fn(spec), spec_rope_fn(spec, direction=-1), D)
    assert _fields(rep) == ["direction"] and rep.fix_verified is True


def test_several_differences_at_once_are_all_named_and_fixed_together():
    D = 64
    a = hf_rotate_half(D, 10000.0)
    inner = meta_complex(D, 500000.0)
    rep = rk.compare(a, lambda x, p: inner(x, p + 1), D)
    assert set(_fields(rep)) == {"layout", "base", "offset"}
    assert rep.fix_verified is True


def test_not_a_rope_has_no_fix():
    D = 16
    rep = rk.compare(hf_rotate_half(D), lambda x, p: x * 2, D)
    assert not rep.equivalent and _fields(rep) == ["rope"]
    assert "no fix" in rep.fix and rep.fix_verified is None


def test_bad_input():
    with pytest.raises(rk.RopeShapeError, match="head_dim=0"):
        rk.compare(hf_rotate_half(8), hf_rotate_half(8), 0)
    with pytest.raises(rk.RopeError, match="B.*raised ValueError: nope"):
        rk.compare(hf_rotate_half(8), lambda x, p: (_ for _ in ()).throw(ValueError("nope")), 8)


def test_public_names_survive_submodule_imports():
    # `from ropekit.doctor.comparison import ...` (the CLI does) must not turn rk.compare into a module
    import importlib

    for mod in ("ropekit.doctor.comparison", "ropekit.doctor.layerdiff", "ropekit.doctor.probe", "ropekit.cli.doctor"):
        importlib.import_module(mod)
    assert rk.compare.__module__ == "ropekit.doctor.comparison" and callable(rk.compare)
    assert callable(rk.diff_models) and callable(rk.fingerprint)


def test_tolerance_follows_the_coarser_dtype():
    # the same RoPE run in float32 and in bfloat16: equal to bf16 precision, and only to that
    D = 64
    fn = hf_rotate_half(D)
    rep = rk.compare(fn, fn, D, dtype=torch.float32, dtype_b=torch.bfloat16)
    assert rep.dtype == torch.bfloat16 and rep.equivalent, rep.report()
    assert 0 < rep.max_abs_err <= 8 * torch.finfo(torch.bfloat16).eps * 5  # randn vectors: |x| < 5
    # judged in float32 ulps the same bf16 rounding would be far out of tolerance
    assert rep.max_abs_err / torch.finfo(torch.float32).eps > 1000


def test_the_suggested_permute_qk_call_makes_attention_scores_equal():
    # run the fix text's own call on weights made for Meta's rotation, then score with transformers'
    D, H, hidden = 32, 2, 24
    rep = rk.compare(hf_rotate_half(D), meta_complex(D), D, n_heads=H)
    call = rep.fix[rep.fix.index("ropekit.permute_qk(") :].split(" for q_proj")[0]
    g = torch.Generator().manual_seed(3)
    wq, wk = torch.randn(H * D, hidden, generator=g), torch.randn(H * D, hidden, generator=g)
    fixed = [eval(call, {"ropekit": rk, "w": w}) for w in (wq, wk)]  # noqa: S307 - our own fix text
    x = torch.randn(6, hidden, generator=g)
    p = torch.tensor([0, 1, 5, 100, 4096, 70000])

    def scores(wq, wk, fn):
        q = fn((x @ wq.T).view(6 * H, D), p.repeat_interleave(H)).view(6, H, D)
        k = fn((x @ wk.T).view(6 * H, D), p.repeat_interleave(H)).view(6, H, D)
        return torch.einsum("ihd,jhd->hij", q.double(), k.double())

    meta, hf = scores(wq, wk, meta_complex(D)), scores(*fixed, hf_rotate_half(D))
    assert (meta - hf).abs().max() <= 1e-4 * meta.abs().max()
    assert (meta - scores(wq, wk, hf_rotate_half(D))).abs().max() > 0.1 * meta.abs().max()  # unfixed differs


# ---------------------------------------------------------------------------------------------
# reliability: own copies, determinism, validated tolerances and head counts
# ---------------------------------------------------------------------------------------------


def test_an_in_place_rope_equals_the_same_pure_function_in_float64():
    # A rotates its input in place; before, B then saw A's output as its input: "NOT equivalent"
    D = 32
    pure = spec_rope_fn(rk.RopeSpec(head_dim=D))

    def in_place(x, p):
        x.copy_(pure(x, p))
        return x

    rep = rk.compare(in_place, pure, D, dtype=torch.float64)
    assert rep.equivalent, rep.report()
    rep = rk.compare(pure, in_place, D, dtype=torch.float64)
    assert rep.equivalent, rep.report()


def test_a_non_deterministic_function_compared_with_itself_is_named():
    # before: "offset -1, fix verified"
    # state kept between calls: every other call is one position ahead
    inner, calls = hf_rotate_half(16), []

    def noisy(x, p):
        calls.append(None)
        return inner(x, p + len(calls) % 2)

    with pytest.raises(rk.RopeArgumentError, match="A is not deterministic"):
        rk.compare(noisy, noisy, 16)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tolerance_ulps": float("inf")}, "tolerance_ulps=inf"),
        ({"tolerance_ulps": float("nan")}, "tolerance_ulps=nan"),
        ({"tolerance_ulps": -1.0}, "tolerance_ulps=-1.0"),
        ({"tolerance_ulps": True}, "tolerance_ulps=True"),
        ({"n_heads": -4}, "n_heads=-4"),
        ({"n_heads": 2.5}, "n_heads=2.5"),
        ({"max_position": 0}, "max_position=0"),
        ({"max_position": 2**40}, "max_position=1099511627776"),
        ({"dtype": torch.int64}, "dtype=torch.int64"),
        ({"dtype_b": "bf16"}, "dtype_b='bf16'"),
        ({"seed": -3}, "seed=-3"),
        ({"names": ("A",)}, "names=('A',)"),
    ],
)
def test_bad_parameters_are_one_error_naming_them(kwargs, words):
    with pytest.raises(rk.RopeError) as exc:
        rk.compare(hf_rotate_half(16), hf_rotate_half(16), 16, **kwargs)
    assert words in str(exc.value) and len(str(exc.value)) < 300


def test_zeros_are_never_equivalent():
    # tolerance_ulps=inf used to call this equivalent; the largest finite tolerance still does not
    rep = rk.compare(hf_rotate_half(16), lambda x, p: torch.zeros_like(x), 16, tolerance_ulps=1e6)
    assert not rep.equivalent


def test_huge_head_dim_and_meta_outputs_are_one_error():
    with pytest.raises(rk.RopeShapeError, match="head_dim=100000"):
        rk.compare(hf_rotate_half(16), hf_rotate_half(16), 100000)
    with pytest.raises(rk.RopeArgumentError, match="B returned a meta tensor"):
        rk.compare(hf_rotate_half(16), lambda x, p: x.to("meta"), 16)


def test_rounding_inside_is_named_and_its_fix_verified():
    rep = rk.compare(hf_rotate_half(128), rk.zoo.fp16_inside(128), 128)
    assert not rep.equivalent and _fields(rep) == ["output_precision"]
    assert "rounds its outputs to float16 inside a float32 interface" in rep.explanation
    assert "in float32 or wider" in rep.fix and rep.fix_verified is True


# ---------------------------------------------------------------------------------------------
# frameworks side by side: the same model's yarn in LitGPT's config and in transformers'
# ---------------------------------------------------------------------------------------------


def test_litgpt_and_transformers_yarn_part_at_the_ramp():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    yarn = {"factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0}
    lit = rk.from_config(
        {"n_embd": 1024, "n_head": 8, "rotary_percentage": 1.0, "rope_base": 10000, "block_size": 16384}
        | {"rope_adjustments": yarn | {"original_max_seq_len": 4096}}
    )
    hf_cfg = transformers.LlamaConfig(
        hidden_size=1024,
        num_attention_heads=8,
        max_position_embeddings=16384,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "original_max_position_embeddings": 4096} | yarn,
    )
    hf_inv, hf_af = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg, "cpu")  # transformers' own yarn, the oracle
    plain = 1.0 / 10000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    lit_inv = rk.inv_freq(lit)[0]
    # LitGPT: pair 0 divided by the factor, pair 63 kept; transformers: the opposite
    assert (plain / lit_inv)[[0, 63]].tolist() == [4.0, 1.0]
    assert (plain / hf_inv.double())[[0, 63]].tolist() == pytest.approx([1.0, 4.0], rel=1e-6)
    hf = rk.from_config(hf_cfg)
    rep = rk.compare(spec_rope_fn(hf, precision="hf"), spec_rope_fn(lit, precision="hf"), 128, names=("HF", "LitGPT"))
    assert not rep.equivalent and "scaling" in _fields(rep), rep.report()
    assert "scaling: HF yarn(factor=4" in rep.explanation and "LitGPT longrope" in rep.explanation
    # and the attention factors differ too: LitGPT without mscale 1.0, transformers 0.1 ln 4 + 1
    assert rk.inv_freq(lit)[1] == 1.0 and hf_af == pytest.approx(0.1 * math.log(4.0) + 1)


def test_checkpoints_of_different_models_are_one_error():
    from ropekit.doctor.checkpoint_diff import diff_checkpoints
    from ropekit.doctor.weights import Geometry

    def sd(n):
        return {
            f"model.layers.{i}.self_attn.{r}_proj.weight": torch.ones(16 if r == "q" else 8, 4)
            for i in range(n)
            for r in "qk"
        }

    g = Geometry(n_heads=2, n_kv_heads=1, head_dim=8, rotary_dim=8, base=1e4, context=4096)
    with pytest.raises(rk.RopeCheckpointError, match="A has 2 layers .* B has 3"):
        diff_checkpoints(sd(2), sd(3), g)
    assert diff_checkpoints(sd(2), sd(2), g).permutation == "identity"
