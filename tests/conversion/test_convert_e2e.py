"""End to end on real transformers models built offline from tiny configs: save, convert the
checkpoint to the interleaved layout with `ropekit convert`, load it back into the same class,
run it with ropekit's interleaved rotation (rk.hf.patch) -> the original logits to fp32 rounding.
Plus HF -> Meta -> HF, byte-identical for every tensor."""

import pytest
import torch

import ropekit as rk
from ropekit import convert

import tiny_models as tm

#: test id -> (family, overrides of tiny_models' sizes).  Weights 10x transformers' default scale
#: (initializer_range 0.2) so that q/k rows in the wrong order move the logits by O(1), not noise.
FAMILIES = {
    "llama_gqa": ("llama", {}),
    "qwen2_bias": ("qwen2", dict(num_key_value_heads=1)),
    # its config keeps tiny_models' num_key_value_heads=2, a key GPT-NeoX (fused qkv, one k head per
    # q head) ignores: the conversion and its verify=True must ignore it too
    "gpt_neox_partial": ("gpt_neox", dict(rotary_pct=0.5)),
    "phi_partial": ("phi", {}),
}


def _tiny(test_id: str, seed: int = 0):
    """(model, input_ids [2, 11]) of one of FAMILIES."""
    family, overrides = FAMILIES[test_id]
    return tm.build(family, seed=seed, seq=11, **overrides, initializer_range=0.2)


def _randomize(model):
    # transformers initializes biases to zero; random ones make a lost or misplaced bias visible
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_permuted_checkpoint_with_interleaved_rotation_gives_original_logits(family, tmp_path):
    model, ids = _tiny(family)
    model = _randomize(model)
    model.save_pretrained(tmp_path / "src", max_shard_size="100KB")
    with torch.no_grad():
        ref = model(ids).logits

    report = convert(
        tmp_path / "src", tmp_path / "inter", layout="interleaved", progress=False, verify=True, log=lambda s: None
    )
    assert report.permuted > 0 and report.verify_max_rel < 1e-12
    loaded = type(model).from_pretrained(tmp_path / "inter").eval()
    assert loaded.config.ropekit_layout == "interleaved"
    with torch.no_grad():
        wrong = loaded(ids).logits  # transformers' half rotation of interleaved rows
        rk.hf.patch(loaded)  # layout from config.ropekit_layout
        got = loaded(ids).logits
        rk.hf.unpatch(loaded)
        again_wrong = loaded(ids).logits
    scale = ref.abs().max().item()
    print(
        family,
        "max |logit diff| patched",
        (got - ref).abs().max().item(),
        "unpatched",
        (wrong - ref).abs().max().item(),
        "scale",
        scale,
    )
    assert (got - ref).abs().max().item() <= 1e-5 * scale, (got - ref).abs().max().item()
    # the check can fail: without ropekit's interleaved rotation the logits are off by O(1)
    assert (wrong - ref).abs().max().item() > 1e-2 * scale
    assert torch.equal(again_wrong, wrong)


def test_patch_half_matches_transformers_and_unpatch_restores(tmp_path):
    model, ids = _tiny("qwen2_bias", seed=1)
    other, _ = _tiny("qwen2_bias", seed=2)
    model, other, ids = _randomize(model), _randomize(other), ids[:1, :9]
    with torch.no_grad():
        ref, ref_other = model(ids).logits, other(ids).logits
        rk.hf.patch(model, layout="half")
        assert rk.hf.is_patched(model) and not rk.hf.is_patched(other)
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-5)
        assert torch.equal(other(ids).logits, ref_other)  # a model that is not patched is untouched
        rk.hf.patch(other, layout="interleaved")
        assert not torch.allclose(other(ids).logits, ref_other, atol=1e-3)
        rk.hf.unpatch(other)
        rk.hf.unpatch(model)
        assert torch.equal(model(ids).logits, ref) and torch.equal(other(ids).logits, ref_other)
    import transformers.models.qwen2.modeling_qwen2 as mq

    assert not hasattr(mq.apply_rotary_pos_emb, "_ropekit_original")  # transformers' own function is back
    with pytest.raises(rk.RopeError, match="not patched"):
        rk.hf.unpatch(model)


def _tensors(path):
    from ropekit.conversion.formats import open_checkpoint

    ck = open_checkpoint(path)
    return {n: ck.tensor(n) for n in ck.names()}


def test_hf_meta_hf_round_trip_is_byte_identical(tmp_path):
    model, ids = _tiny("llama_gqa", seed=2)
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    log = []
    convert(tmp_path / "hf", tmp_path / "meta", to="meta", progress=False, verify=True, log=log.append)
    convert(tmp_path / "meta", tmp_path / "hf2", to="hf", progress=False, verify=True, log=log.append)
    verified = [line for line in log if line.startswith("verify: attention scores q.k")]
    assert len(verified) == 2 and all("2 layer(s): max |diff|" in line for line in verified), log
    a, b = _tensors(tmp_path / "hf"), _tensors(tmp_path / "hf2")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].view(-1).view(torch.uint8).tolist() == b[name].view(-1).view(torch.uint8).tolist(), name
    # the Meta side really is Meta's layout: wq rows are the interleaved permutation of q_proj
    meta = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    q = a["model.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(meta["layers.1.attention.wq.weight"], rk.permute_qk(q, 4, 16, src="half", dst="interleaved"))
    # and the Meta -> HF config rebuilds a model that gives the original logits
    from transformers import LlamaForCausalLM

    # (compared with the source loaded the same way: model.float() would keep transformers' inv_freq
    # buffer rounded to bf16 by model.to(bfloat16), a different model)
    back = LlamaForCausalLM.from_pretrained(tmp_path / "hf2", dtype=torch.float32).eval()
    orig = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(back(ids[:1, :7]).logits, orig(ids[:1, :7]).logits)
