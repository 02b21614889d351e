"""The family census: every model family of the installed transformers that has a language-model
rotary embedding is read by ``from_config``, or refused for a reason written down here.

For each family's default config the family's OWN rotary module is built and called, and its own
apply function is run on random q/k; ropekit's spec must give the same tables in hf precision and
the same attention scores q.k (scores, not vectors: some families reorder dims on output).  A
release that adds a family fails ``test_every_family_is_read_or_refused`` until ropekit reads it
(or the family is listed in ``REFUSED`` with its reason).
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import logging
import warnings

import pytest

import ropekit as rk
from ropekit.dialects.measured import SCORE_TOL, TABLE_TOL, Probe, axis_positions, family_layer_types
from ropekit.dialects.rotary_modules import rope_sub_configs
from ropekit.errors import RopeConfigError, RopePositionError
from ropekit.tables import mrope_axis_of_columns

transformers = pytest.importorskip("transformers")

#: rotary classes of other towers (2D image / audio / diffusion position schemes), not the LM's
TOWERS = ("Vision", "Audio", "DiT", "Talker", "Video")

#: model_type -> (words of the RopeConfigError that refuses its default config, the smallest edit
#: of its text config that makes transformers' own rotary module run, and why).  The default
#: config is still refused with a clear error; the edited one must be read exactly.
_DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
CONSISTENT = {
    # layer_types lists full_attention, rope_parameters defaults to {}: no entry to build from
    **dict.fromkeys(
        ("cohere_compass", "cohere_compass_text"),
        ("rope_parameters has no entry", {"rope_parameters": {"full_attention": dict(_DEFAULT_ROPE)}}),
    ),
    # the module's default mrope_section [8, 12, 12] covers 32 pairs; the released GLM-4.1V /
    # GLM-Image text configs rotate half of each 128-dim head (partial_rotary_factor 0.5)
    **dict.fromkeys(
        ("glm4v", "glm4v_text", "glm_image", "glm_image_text"),
        ("split_with_sizes", {"rope_parameters": {**_DEFAULT_ROPE, "partial_rotary_factor": 0.5}}),
    ),
    # 4096 / 96 heads gives head_dim 42 and an odd rotary_dim 21; GLM-4.5(V) sets head_dim 128
    **dict.fromkeys(("glm4v_moe", "glm4v_moe_text"), ("split_with_sizes", {"head_dim": 128})),
    "glm4_moe": ("must be even", {"head_dim": 128}),
    # 2048 / 28 heads gives head_dim 73 (odd); the released Qwen3-Omni thinker sets head_dim 128
    **dict.fromkeys(
        ("qwen3_omni_moe", "qwen3_omni_moe_text", "qwen3_omni_moe_thinker"), ("must be even", {"head_dim": 128})
    ),
    # mrope_section (xdrope_section) is None by default and the module takes len() of it;
    # HunyuanOCR's config has four axes of 16 pairs
    **dict.fromkeys(
        ("hunyuan_vl", "hunyuan_vl_text"),
        ("has no len()", {"rope_parameters": {**_DEFAULT_ROPE, "mrope_section": [16, 16, 16, 16]}}),
    ),
}

#: model_type -> words of the RopeConfigError that refuses it (transformers 5.24), with why
REFUSED = {
    # the sections split the duplicated table: a pair's two members follow different axes
    **dict.fromkeys(("hunyuan_vl", "hunyuan_vl_text"), "the two members of a pair follow different axes"),
}

#: the 2-D image rotaries: model_type -> (layout, pairs per axis, whether the axes alternate pair by
#: pair), read from each family's modeling code by hand (transformers 5.24), not from ropekit
IMAGE = {
    "mlcd": ("half", 26, False),  # head_dim 104: cat(height freqs, width freqs), duplicated by cat
    "mlcd_vision_model": ("half", 26, False),
    "sam3_vit_model": ("interleaved", 16, False),  # cat(h, w), repeat_interleave(2), rotate_pairwise
    "eomt_dinov3": ("half", 16, False),  # angles (N, 2, head_dim/4).flatten(1, 2).tile(2)
    "efficientloftr": ("interleaved", 64, True),  # emb[..., 0::2] rows, emb[..., 1::2] columns
}


def consistent_config(model_type, config):
    """The default config with the edit of ``CONSISTENT`` applied to (a copy of) its text config."""
    config = copy.deepcopy(config)
    text = config.get_text_config()
    for key, value in CONSISTENT[model_type][1].items():
        setattr(text, key, copy.deepcopy(value))
    return config


def _annotated_config(cls):
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name not in ("self", "device"):
            return p.annotation if isinstance(p.annotation, type) else None
    return None


@functools.cache
def census() -> dict:
    """model_type -> default config, for every config whose modeling module defines a language
    model RotaryEmbedding class built from that config (or from its text config)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    out = {}
    logging.disable(logging.WARNING)  # default configs log a lot; restored below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for model_type in list(CONFIG_MAPPING.keys()):
                config_class = CONFIG_MAPPING[model_type]
                try:
                    modeling = importlib.import_module(config_class.__module__.replace(".configuration_", ".modeling_"))
                    config = config_class()
                    text = config.get_text_config()
                except Exception:  # no modeling module, no default config, or several text decoders
                    continue
                rotaries = [
                    obj
                    for name, obj in vars(modeling).items()
                    if isinstance(obj, type)
                    and name.endswith("RotaryEmbedding")
                    and obj.__module__ == modeling.__name__
                    and not any(t in name for t in TOWERS)
                ]
                for cls in rotaries:
                    takes = _annotated_config(cls)
                    if takes is None:
                        continue
                    parts = getattr(takes, "sub_configs", None) or {}
                    if type(text) is takes or type(config) is takes or parts.get("text_config") is type(text):
                        out[model_type] = config
                        break
    finally:
        logging.disable(logging.NOTSET)
    return out


def _parts(config):
    """The configs to read: the config itself, or each sub-config that has a RoPE of its own (BLT)."""
    names = rope_sub_configs(config)
    return [getattr(config, n) for n in names] if len(names) > 1 else [config]


def _check(model_type, config):
    """'' when from_config reads the family exactly, else why not."""
    if model_type in CONSISTENT:
        words = CONSISTENT[model_type][0]
        try:
            rk.from_config(config, layer_type=(family_layer_types(config) or [None])[0])
            return f"the default config is read, CONSISTENT lists it as refused ({words!r})"
        except RopeConfigError as exc:
            if words not in str(exc):
                return f"default config refused for another reason: {exc}"
        config = consistent_config(model_type, config)
    return "; ".join(filter(None, (_check_one(part) for part in _parts(config))))


def _check_one(config):
    layer_types = family_layer_types(config)
    problems = []
    for layer_type in layer_types or [None]:
        try:
            spec = rk.from_config(config, layer_type=layer_type)
            probe = Probe(config, layer_type)
        except RopeConfigError as exc:
            problems.append(str(exc))
            continue
        table, score, axes = probe.table_err(spec), probe.score_err(spec), probe.axes_err(spec)
        if not (table <= TABLE_TOL and score <= SCORE_TOL and axes <= TABLE_TOL):
            problems.append(
                f"[{layer_type}] {spec.describe()}: table err {table:.3g}, q.k err {score:.3g}, per-axis err {axes:.3g}"
            )
    return "; ".join(problems)


@functools.cache
def results() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {mt: _check(mt, cfg) for mt, cfg in census().items()}


def test_census_finds_the_families():
    found = census()
    # the families the project started from, a text tower (qwen2_vl), an audio model (moshi),
    # an embedding model (modernbert) and a per-layer-type config with conv layers (lfm3)
    for model_type in ("llama", "gemma3_text", "glm", "gptj", "qwen2_vl", "moshi", "modernbert", "lfm3"):
        assert model_type in found, model_type
    assert len(found) >= 150


def test_every_family_is_read_or_refused():
    res = results()
    unexpected = {mt: why for mt, why in res.items() if why and not (mt in REFUSED and REFUSED[mt] in why)}
    assert not unexpected, "\n".join(f"{mt}: {why}" for mt, why in sorted(unexpected.items()))


def test_refused_list_is_current():
    res = results()
    stale = sorted(mt for mt in REFUSED if mt in res and not res[mt])
    assert not stale, f"read now, drop them from REFUSED: {stale}"


@pytest.mark.parametrize("model_type", ["llama", "glm", "gptj", "lfm3", "deepseek_v2", "nanochat"])
def test_the_tolerances_catch_a_wrong_spec(model_type):
    """A base off by 0.1 % fails the table tolerance; the other layout, or the other direction, fails
    the score tolerance."""
    config = census()[model_type]
    layer_type = (family_layer_types(config) or [None])[0]
    spec = rk.from_config(config, layer_type=layer_type)
    probe = Probe(config, layer_type)
    assert probe.table_err(spec) <= TABLE_TOL and probe.score_err(spec) <= SCORE_TOL
    assert probe.table_err(spec.replace(base=spec.base * 1.001)) > TABLE_TOL
    other = "interleaved" if spec.layout == "half" else "half"
    assert probe.score_err(spec.with_layout(other)) > SCORE_TOL
    assert probe.score_err(spec.replace(angle_sign=-spec.angle_sign)) > SCORE_TOL


def test_nanochat_rotates_by_minus_angle():
    """NanoChat's apply is rotate_half with sin negated: a rotation by -angle.  from_config reads it
    (angle_sign=-1), the measured path finds the direction on its own (and says so), and the census
    check catches the wrong sign: +angle fails the score tolerance, against NanoChat's own apply."""
    import torch
    from transformers.models.nanochat import modeling_nanochat as nano

    from ropekit.dialects.measured import measure

    config = census()["nanochat"]
    spec = rk.from_config(config)
    assert (spec.layout, spec.angle_sign) == ("half", -1)
    probe = Probe(config)
    assert probe.table_err(spec) <= TABLE_TOL and probe.score_err(spec) <= SCORE_TOL
    assert probe.score_err(spec.turning_forward()) > 100 * SCORE_TOL  # the wrong sign
    assert probe.score_err(spec.with_layout("interleaved")) > 100 * SCORE_TOL
    measured = measure(config).spec
    assert measured == spec and "by -angle (angle_sign=-1, measured)" in measured.source
    # the oracle itself: NanoChat's apply on its module's tables against ropekit's -angle rotation
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, probe.cos.shape[0], spec.head_dim, generator=gen)
    theirs, _ = nano.apply_rotary_pos_emb(q, q, *(t[None] for t in probe.raw))
    cos, sin = rk.cos_sin(spec, axis_positions(1)[0], precision="hf")  # the probe's sample positions
    ours = rk.apply_rope(q, cos, sin, layout="half", format="bhsd", backend="reference")
    plus = rk.apply_rope(q, cos, -sin, layout="half", format="bhsd", backend="reference")
    assert (theirs - ours).abs().max() < 1e-5
    assert (theirs - plus).abs().max() > 0.1


def test_per_axis_check_catches_a_wrong_mrope():
    """Distinct per-axis positions: the other section kind, or shifted sections, fail the check."""
    for model_type in ("qwen2_vl", "qwen3_vl"):
        config = census()[model_type]
        spec = rk.from_config(config)
        probe = Probe(config)
        assert probe.axes_err(spec) <= TABLE_TOL
        assert probe.axes_err(spec.replace(mrope_interleaved=not spec.mrope_interleaved)) > TABLE_TOL
        a, b, c = spec.mrope_section
        assert probe.axes_err(spec.replace(mrope_section=(a + 2, b - 2, c))) > TABLE_TOL


def test_composite_with_one_rope_per_sub_model():
    """BLT: the composite config is refused naming its sub-models; each one is read."""
    config = census()["blt"]
    with pytest.raises(RopeConfigError, match="one RoPE per sub-model .*global_config"):
        rk.from_config(config)
    assert rk.from_config(config.patcher_config).base == config.patcher_config.rope_parameters["rope_theta"]


def test_layer_type_without_rope_is_refused():
    config = census()["beam"]
    assert family_layer_types(config) == ["sliding_attention"]
    with pytest.raises(RopeConfigError, match="use no RoPE"):
        rk.from_config(config, layer_type="full_attention")


def test_per_axis_check_catches_a_wrong_axis_map():
    """ERNIE-4.5-VL against its own module: the axis map read from its config is exact at distinct
    per-axis positions; height and width swapped, or the same counts as either section kind, are not."""
    from ropekit.dialects.measured import measure

    config = census()["ernie4_5_vl_moe"]
    spec = rk.from_config(config)
    probe = Probe(config)
    assert spec.mrope_axes == (1, 2) * 22 + (0,) * 20 and spec.layout == "interleaved"
    assert probe.table_err(spec) <= TABLE_TOL and probe.score_err(spec) <= SCORE_TOL
    assert probe.axes_err(spec) <= TABLE_TOL
    swapped = spec.replace(mrope_axes=tuple({1: 2, 2: 1}.get(a, a) for a in spec.mrope_axes))
    assert probe.axes_err(swapped) > TABLE_TOL
    for interleaved in (False, True):
        assert probe.axes_err(spec.replace(mrope_axes=None, mrope_interleaved=interleaved)) > TABLE_TOL
    # the fallback for families outside the table measures the same map from the module itself
    measured = measure(config).spec
    assert measured == spec and "axis of each pair measured" in measured.source


@pytest.mark.parametrize("model_type", sorted(IMAGE))
def test_image_rotaries_are_axial(model_type):
    """The image rotaries read as axial specs: the layout and axis arrangement their code has, exact
    against their own module on a grid of patches; one frequency ladder for both axes (not axial), the
    axes swapped, or the other layout, all fail the tolerances."""
    layout, per_axis, alternate = IMAGE[model_type]
    config = census()[model_type]
    spec = rk.from_config(config)
    probe = Probe(config)
    assert (spec.layout, spec.axial, spec.mrope_section) == (layout, True, (per_axis, per_axis))
    assert spec.mrope_interleaved == alternate and "axial image RoPE" in spec.source
    assert probe.table_err(spec) <= TABLE_TOL and probe.score_err(spec) <= SCORE_TOL
    assert probe.positions.shape[0] == 2  # [2, N]: one row per axis
    if bool((probe.positions < 0).any()):  # DINOv3's centred coordinates: only an axial spec takes them
        with pytest.raises(RopePositionError, match="must be >= 0"):
            probe.table_err(spec.replace(axial=False))
    else:
        assert probe.table_err(spec.replace(axial=False)) > TABLE_TOL
    axes = mrope_axis_of_columns(spec).tolist()
    swapped = spec.replace(mrope_section=None, mrope_axes=[1 - a for a in axes], mrope_interleaved=False)
    assert probe.table_err(swapped) > TABLE_TOL
    assert probe.score_err(spec.with_layout("half" if layout == "interleaved" else "interleaved")) > SCORE_TOL
    assert probe.table_err(spec.replace(base=spec.base * 1.001)) > TABLE_TOL


def test_image_rotary_tables_against_its_own_module():
    """SAM 3's module at hand-made fractional (h, w) ids, as its global layers scale them, against
    ropekit's tables at the transposed ids (hf precision, bit for bit)."""
    import torch
    from transformers.models.sam3 import modeling_sam3

    config = census()["sam3_vit_model"]
    spec = rk.from_config(config)
    ids = torch.stack([torch.arange(20).repeat_interleave(3), torch.arange(3).repeat(20)], dim=-1) * (24 / 7)
    cos, sin = modeling_sam3.Sam3ViTRotaryEmbedding(config)(torch.zeros(1), ids)
    mine_cos, mine_sin = rk.cos_sin(spec, ids.T, precision="hf")
    assert torch.equal(cos[0, :, 0::2], mine_cos) and torch.equal(sin[0, :, 0::2], mine_sin)


def test_image_rotaries_have_no_drop_in_module_and_no_patch():
    """Their modules take the family's own patch inputs: RotaryEmbedding(config) refuses (naming the
    way to build the tables), spec= takes ropekit's [2, N] positions; hf.patch refuses at patch() time."""
    import torch

    from ropekit.errors import RopeError, RopeSpecError
    from transformers import MLCDVisionConfig, MLCDVisionModel

    config = MLCDVisionConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64, image_size=28, patch_size=14
    )
    with pytest.raises(RopeSpecError, match="axial image RoPE.*ropekit.cos_sin"):
        rk.RotaryEmbedding(config)
    spec = rk.from_config(config)
    pos = torch.stack([torch.arange(3).repeat_interleave(2), torch.arange(2).repeat(3)])
    cos, _ = rk.RotaryEmbedding(spec=spec)(torch.zeros(1, 6, 16), pos)
    assert torch.equal(cos[:, : spec.n_pairs], rk.cos_sin(spec, pos)[0])
    model = MLCDVisionModel(config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RopeError, match="apply_rotary_pos_emb_vision"):
        rk.hf.patch(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hunyuan_vl_is_refused_with_the_per_pair_reading_named():
    """HunyuanOCR's module splits its duplicated table by its sections: the refusal names the per-pair
    reading (contiguous sections over the compact table). That reading equals the module at text
    positions and differs at distinct per-axis positions, which is why it is not read silently."""
    config = consistent_config("hunyuan_vl", census()["hunyuan_vl"])
    with pytest.raises(RopeConfigError, match=r"rotate contiguous mrope_section=\[16, 16, 16, 16\] instead"):
        rk.from_config(config)
    probe = Probe(config)
    base = config.get_text_config().rope_parameters["rope_theta"]
    spec = rk.RopeSpec(head_dim=2 * probe.n_pairs, base=base, mrope_section=(16, 16, 16, 16))
    assert probe.table_err(spec) == 0.0 and probe.score_err(spec) <= SCORE_TOL
    assert probe.axes_err(spec) > 0.1
