"""Validation as strict as transformers' own, with transformers as the oracle.

A shim puts ropekit where transformers' ``test_modeling_rope_utils`` exercises its RoPE
checks: a config's ``validate_rope`` (the raw dict, no standardization), a config built from
keys (standardized first), keys of another rope type (transformers logs "Unrecognized keys",
ropekit warns), and the inverse frequencies of every rope type (transformers'
``ROPE_INIT_FUNCTIONS`` against ropekit's ``precision="hf"``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import pytest
import torch

import ropekit as rk
from ropekit.dialects.hf_scaling import validate
from ropekit.dialects.releases import installed_release, rules_for

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(installed_release() < (5, 0, 0), reason="the 5.x validation rules (rope_parameters)")

V5 = rules_for((5, 24, 0))
TYPES = ("linear", "dynamic", "yarn", "longrope", "llama3")
#: which rope types a key belongs to (transformers' validation sets)
BELONGS = {
    "factor": ("linear", "dynamic", "yarn", "longrope", "llama3"),
    "attention_factor": ("yarn", "longrope"),
    "beta_fast": ("yarn",),
    "beta_slow": ("yarn",),
    "short_factor": ("longrope",),
    "long_factor": ("longrope",),
}
COMPLETE = {
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 2.0, "original_max_position_embeddings": 2048},
    "longrope": {"short_factor": [1.0] * 64, "long_factor": [2.0] * 64, "original_max_position_embeddings": 2048},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 512},
}


@contextlib.contextmanager
def transformers_log():
    """What transformers' rope utilities log while the block runs."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers.modeling_rope_utils")
    # other tests quiet transformers (set_verbosity_error, logging.disable): hear it here anyway
    level, disabled = logger.level, logging.root.manager.disable
    logger.setLevel(logging.WARNING)
    logging.disable(logging.NOTSET)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logging.disable(disabled)


def _transformers_validate(params) -> str:
    """'raises' / 'warns' / 'ok' from transformers' own validate_rope on the raw dict."""
    config = transformers.LlamaConfig()
    config.rope_parameters = dict(params, rope_theta=10000.0)
    with transformers_log() as records:
        try:
            config.validate_rope()
        except KeyError:
            return "raises"
    return "warns" if any("Unrecognized keys" in r.getMessage() for r in records) else "ok"


def _ropekit_validate(params) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            validate(dict(params, rope_theta=10000.0), V5)
        except rk.RopeConfigError:
            return "raises"
    return "warns" if any(issubclass(w.category, rk.RopeConfigWarning) for w in caught) else "ok"


@pytest.mark.parametrize("rope_type", TYPES)
def test_a_bare_rope_type_is_refused(rope_type):
    bare = {"rope_type": rope_type}
    assert _transformers_validate(bare) == "raises"
    assert _ropekit_validate(bare) == "raises"


@pytest.mark.parametrize("rope_type", TYPES)
def test_complete_parameters_pass(rope_type):
    params = {"rope_type": rope_type, **COMPLETE[rope_type]}
    assert _transformers_validate(params) == "ok"
    assert _ropekit_validate(params) == "ok"


@pytest.mark.parametrize("rope_type", ["yarn", "longrope", "llama3"])
def test_raw_dict_without_original_is_refused(rope_type):
    params = {"rope_type": rope_type, **COMPLETE[rope_type]}
    del params["original_max_position_embeddings"]
    assert _transformers_validate(params) == "raises"
    assert _ropekit_validate(params) == "raises"


@pytest.mark.parametrize("key", sorted(BELONGS))
@pytest.mark.parametrize("rope_type", TYPES)
def test_keys_of_another_rope_type_warn(rope_type, key):
    params = {"rope_type": rope_type, **COMPLETE[rope_type]}
    if key in params:
        return
    params[key] = 1.5
    expected = "ok" if rope_type in BELONGS[key] else "warns"
    assert _transformers_validate(params) == expected
    assert _ropekit_validate(params) == expected


def test_loaded_config_yarn_without_factor_raises_like_transformers():
    keys = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 2}
    with pytest.raises(KeyError):
        transformers.LlamaConfig(**keys, rope_parameters={"rope_type": "yarn"})
    with pytest.raises(rk.RopeConfigError, match="factor is missing"):
        rk.from_config({**keys, "rope_parameters": {"rope_type": "yarn"}})
    # on load, the pretraining length is filled from max_position_embeddings (5.x standardization)
    cfg = transformers.LlamaConfig(**keys, rope_parameters={"rope_type": "yarn", "factor": 2.0})
    assert rk.from_config(cfg).scaling.original_max_position_embeddings == cfg.max_position_embeddings


@pytest.mark.parametrize(
    "rope_type, params",
    [
        ("default", {}),
        ("linear", {"factor": 10.0}),
        ("dynamic", {"factor": 10.0}),
        ("yarn", {"factor": 10.0, "beta_fast": 32, "beta_slow": 1}),
        ("yarn", {"factor": 10.0, "beta_fast": 1000, "beta_slow": 1}),
        ("yarn", {"factor": 2.0, "attention_factor": 0.5}),
        ("longrope", {"factor": 10.0, "short_factor": [2.0] * 64, "long_factor": list(range(1, 65))}),
        ("llama3", {"factor": 10.0, "low_freq_factor": 1, "high_freq_factor": 4}),
        ("llama3", {"factor": 10.0, "low_freq_factor": 1, "high_freq_factor": 1000}),
    ],
)
def test_inverse_frequencies_equal_transformers(rope_type, params):
    from transformers import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0, **params})
    if rope_type == "default":
        theirs, their_factor = (
            transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(config)
        )
    else:
        theirs, their_factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    spec = rk.from_config(config)
    mine, my_factor = rk.inv_freq(spec, precision="hf")
    assert torch.equal(mine, theirs) and my_factor == pytest.approx(their_factor, rel=1e-12)


def _transformers_logs_unrecognized(config) -> bool:
    with transformers_log() as records:
        config.validate_rope()
    return any("Unrecognized keys" in r.getMessage() for r in records)


def _ropekit_warns(config) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rk.from_config(config)
    return any(issubclass(w.category, rk.RopeConfigWarning) and "do not belong" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "config_class, ignore",
    [
        ("LlamaConfig", None),  # a text-only family: mRoPE keys are unrecognized
        ("LlamaConfig", {"mrope_section"}),  # ... unless the config says to ignore them
        ("Qwen2VLTextConfig", None),  # a multimodal family's class ignores them
    ],
)
def test_mrope_keys_warn_where_transformers_logs(config_class, ignore):
    config = getattr(transformers, config_class)(hidden_size=64, num_attention_heads=2)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}
    if ignore is not None:
        config.ignore_keys_at_rope_validation = ignore
    expected = _transformers_logs_unrecognized(config)
    assert expected == (config_class == "LlamaConfig" and ignore is None)
    assert _ropekit_warns(config) == expected


def test_ignore_keys_in_a_config_json_are_honoured_as_transformers_does():
    keys = {"hidden_size": 64, "num_attention_heads": 2}
    params = {"rope_type": "default", "rope_theta": 1e4, "llama_4_scaling_beta": 0.1}
    for ignore in ([], ["llama_4_scaling_beta"]):
        cfg = {"model_type": "llama", **keys, "rope_parameters": dict(params), "ignore_keys_at_rope_validation": ignore}
        config = transformers.LlamaConfig.from_dict({k: v for k, v in cfg.items() if k != "model_type"})
        assert _transformers_logs_unrecognized(config) == (not ignore)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rk.from_config(cfg)
        assert any(issubclass(w.category, rk.RopeConfigWarning) for w in caught) == (not ignore)


def test_a_text_only_family_runs_plain_rope_whatever_mrope_keys_it_carries():
    """transformers' Llama ignores mrope_section (and logs so): ropekit's spec has no mRoPE either."""
    keys = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 2}
    plain = rk.from_config({**keys, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    with pytest.warns(rk.RopeConfigWarning, match="mrope_section"):
        spec = rk.from_config(
            {**keys, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]}}
        )
    assert spec == plain and spec.mrope_section is None
    config = transformers.LlamaConfig(**{k: v for k, v in keys.items() if k != "model_type"})
    config.rope_parameters = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]}
    theirs = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config).inv_freq
    assert torch.equal(rk.inv_freq(spec, precision="hf")[0], theirs)
