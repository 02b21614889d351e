"""The family census: every model family of the installed transformers that has a language-model
rotary embedding is read by ``from_config``, or refused for a reason written down here.

For each family's default config the family's OWN rotary module is built and called, and its own
apply function is run on random q/k; ropekit's spec must give the same tables in hf precision and
the same attention scores q.k (scores, not vectors: some families reorder dims on output).  A
release that adds a family fails ``test_every_family_is_read_or_refused`` until ropekit reads it
(or the family is listed in ``REFUSED`` with its reason).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import warnings

import pytest

import ropekit as rk
from ropekit.dialects.measured import SCORE_TOL, TABLE_TOL, Probe, family_layer_types
from ropekit.errors import RopeConfigError

transformers = pytest.importorskip("transformers")

#: rotary classes of other towers (2D image / audio / diffusion position schemes), not the LM's
TOWERS = ("Vision", "Audio", "DiT", "Talker", "Video")

_OWN_MODULE_FAILS = "failed:"  # the family's own rotary module cannot be built or called on its default config
#: model_type -> words of the RopeConfigError that refuses it (transformers 5.24), with why
REFUSED = {
    # transformers' own rotary module fails on the family's default config (nothing to reproduce)
    **dict.fromkeys(
        (
            "beam",  # KeyError('full_attention'): layer type listed without RoPE parameters
            "blt",  # the composite config has no hidden_size
            "cohere_compass",
            "cohere_compass_text",  # KeyError('full_attention')
            "glm4v",
            "glm4v_text",
            "glm4v_moe",
            "glm4v_moe_text",
            "glm_image",
            "glm_image_text",  # default mrope_section does not match the default head size
            "hunyuan_vl",
            "hunyuan_vl_text",  # xdrope section is None by default
            "nemotron3_diarization",  # no max_position_embeddings
        ),
        _OWN_MODULE_FAILS,
    ),
    # 2-D image position schemes (forward(x) without position_ids): not a 1-D RoPE
    **dict.fromkeys(
        ("efficientloftr", "eomt_dinov3", "mlcd", "mlcd_vision_model", "sam3_vit_model"), _OWN_MODULE_FAILS
    ),
    # per-layer-type names ("main", "compress") that are not rope_parameters keys of the config
    "deepseek_v4": "has one RoPE for every layer",
    # default head size 4096 / 96 heads is not an integer; rotary_dim would be odd
    "glm4_moe": "must be even",
    # rotate_half with flipped signs: a rotation by -angle, which a RopeSpec cannot express
    "nanochat": "no single layout reproduces",
    # the thinker's text rotary and its apply disagree with both layouts on text positions
    **dict.fromkeys(("qwen3_omni_moe", "qwen3_omni_moe_text", "qwen3_omni_moe_thinker"), "no single layout"),
}


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


def _check(model_type, config):
    """'' when from_config reads the family exactly, else why not."""
    layer_types = family_layer_types(config)
    problems = []
    for layer_type in layer_types or [None]:
        try:
            spec = rk.from_config(config, layer_type=layer_type)
            probe = Probe(config, layer_type)
        except RopeConfigError as exc:
            problems.append(str(exc))
            continue
        table, score = probe.table_err(spec), probe.score_err(spec)
        if not (table <= TABLE_TOL and score <= SCORE_TOL):
            problems.append(f"[{layer_type}] {spec.describe()}: table err {table:.3g}, q.k err {score:.3g}")
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


@pytest.mark.parametrize("model_type", ["llama", "glm", "gptj", "lfm3", "deepseek_v2"])
def test_the_tolerances_catch_a_wrong_spec(model_type):
    """A base off by 0.1 % fails the table tolerance; the other layout fails the score tolerance."""
    config = census()[model_type]
    layer_type = (family_layer_types(config) or [None])[0]
    spec = rk.from_config(config, layer_type=layer_type)
    probe = Probe(config, layer_type)
    assert probe.table_err(spec) <= TABLE_TOL and probe.score_err(spec) <= SCORE_TOL
    assert probe.table_err(spec.replace(base=spec.base * 1.001)) > TABLE_TOL
    other = "interleaved" if spec.layout == "half" else "half"
    assert probe.score_err(spec.with_layout(other)) > SCORE_TOL
