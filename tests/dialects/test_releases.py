"""from_config + precision="hf" reproduce what the INSTALLED transformers release computes.

Each ``release_matrix`` test compares ropekit against the installed release's own Llama rotary
module, built from the same config.json contents by that release's own LlamaConfig.  Run them
under every release of the matrix:

    PYTHONPATH=.deps/transformers-4.38.1 python -m pytest -m release_matrix tests/dialects/test_releases.py

The other tests check the release rules against each other with an explicit
``transformers_version=`` (no other release needed).
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch

import ropekit as rk
from ropekit.dialects.releases import installed_release, target_release

import tiny_models as tm

transformers = pytest.importorskip("transformers")
RELEASE = installed_release()

TINY = tm.TINY_LLAMA_JSON
#: one factor per rotating pair (head_dim 32)
LONGROPE_FACTORS = {"short_factor": [1.0 + i / 16 for i in range(16)], "long_factor": [2.0 + i / 8 for i in range(16)]}
#: config.json contents as different releases save them; each names what it exercises
CONFIGS = {
    "v4-default": {"rope_theta": 500000.0},
    "v4-linear": {"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 3.0}},
    "v4-dynamic": {"rope_theta": 10000.0, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "v4-yarn": {
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
    },
    # factor != max_position_embeddings / original: 4.51-4.55 replace it by the ratio
    "v4-yarn-ratio": {
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 512},
    },
    "v4-llama3": {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 512,
        },
    },
    "v4-longrope": {
        "rope_theta": 10000.0,
        "rope_scaling": {
            "rope_type": "longrope",
            **LONGROPE_FACTORS,
            "original_max_position_embeddings": 512,
        },
    },
    "v4-longrope-factor": {
        "rope_theta": 10000.0,
        "rope_scaling": {
            "rope_type": "longrope",
            "factor": 4.0,
            **LONGROPE_FACTORS,
            "original_max_position_embeddings": 512,
        },
    },
    "phi3-style-longrope": {
        "original_max_position_embeddings": 512,
        "rope_scaling": {
            "type": "longrope",
            **LONGROPE_FACTORS,
        },
    },
    # saved by 5.x: rope_parameters only
    "v5-only": {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
    "v5-linear": {"rope_parameters": {"rope_type": "linear", "factor": 3.0, "rope_theta": 10000.0}},
}
POSITIONS = torch.tensor([0, 1, 2, 7, 100, 511, 1000, 2047])


def _config(name):
    # a fresh copy: transformers' LlamaConfig writes into the rope_scaling dict it is given
    return copy.deepcopy({**TINY, **CONFIGS[name]})


def _transformers_tables(config_dict):
    """cos, sin (compact) from the installed release's own Llama rotary module, or the exception
    its LlamaConfig / module raised."""
    from transformers.models.llama import modeling_llama as ml

    from transformers import LlamaConfig

    cfg = LlamaConfig(**copy.deepcopy({k: v for k, v in config_dict.items() if k != "model_type"}))
    with torch.device("cpu"):
        attn = getattr(ml.LlamaModel(cfg), "rotary_emb", None)
        if attn is None:  # 4.37 / 4.38: one rotary module per attention layer
            attn = ml.LlamaModel(cfg).layers[0].self_attn.rotary_emb
    x = torch.zeros(1, 1, len(POSITIONS), 32)
    with torch.no_grad():
        if "position_ids" in inspect.signature(attn.forward).parameters:  # 4.38 and later
            cos, sin = attn(x, POSITIONS[None])
        else:  # 4.37: forward(x, seq_len) -> cached tables indexed by position
            cos, sin = attn(x, seq_len=int(POSITIONS.max()) + 1)
            cos, sin = cos[POSITIONS], sin[POSITIONS]
    cos, sin = cos.reshape(len(POSITIONS), -1), sin.reshape(len(POSITIONS), -1)
    half = cos.shape[-1] // 2
    return cos[:, :half].float(), sin[:, :half].float()


def _ropekit_tables(config_dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = rk.from_config(config_dict)
    # dynamic: transformers' module at init covers max_position_embeddings (no growth below it)
    seq_len = 1 if isinstance(spec.scaling, rk.Dynamic) else None
    return rk.cos_sin(spec, POSITIONS, precision="hf", seq_len=seq_len)


@pytest.mark.release_matrix
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_precision_is_the_installed_release_bit_for_bit(name):
    config_dict = _config(name)
    try:
        theirs = _transformers_tables(config_dict)
    except (ValueError, KeyError, TypeError) as exc:  # the release refuses this config
        with pytest.raises(rk.RopeConfigError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rk.from_config(config_dict)
        assert exc is not None
        return
    mine = _ropekit_tables(config_dict)
    assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1]), (
        name,
        (mine[0] - theirs[0]).abs().max().item(),
    )


@pytest.mark.release_matrix
def test_a_wrong_release_rule_fails_the_comparison():
    """The comparison above can fail: reading a 5.x config the 5.x way under 4.x is caught."""
    config_dict = _config("v5-only")
    theirs = _transformers_tables(config_dict)
    spec5 = rk.from_config(config_dict, transformers_version="5.0.0")
    mine5 = rk.cos_sin(spec5, POSITIONS, precision="hf")
    same = torch.equal(mine5[0], theirs[0])
    assert same == (RELEASE >= (5, 0, 0))


@pytest.mark.release_matrix
def test_v5_keys_under_4x_warn_with_the_base_used():
    config_dict = _config("v5-only")
    if RELEASE >= (5, 0, 0):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert rk.from_config(config_dict).base == 500000.0
        return
    with pytest.warns(rk.RopeConfigWarning, match=r"ignores rope_parameters.*base=10000"):
        assert rk.from_config(config_dict).base == 10000.0


# -- the rules side by side (explicit target release; runs under any installed release) ---------


def test_explicit_release_and_installed_default():
    assert target_release() == (RELEASE or target_release())
    assert target_release("4.38.1") == (4, 38, 1)
    with pytest.raises(rk.RopeConfigError, match="transformers_version"):
        rk.from_config(_config("v4-default"), transformers_version="four")
    with pytest.raises(rk.RopeConfigError, match="4.37 and later"):
        rk.from_config(_config("v4-default"), transformers_version="4.30.0")


def test_linear_before_443_divides_positions():
    old = rk.from_config(_config("v4-linear"), transformers_version="4.37.2")
    new = rk.from_config(_config("v4-linear"), transformers_version="4.57.6")
    assert old.scaling.scale_positions and not new.scaling.scale_positions
    pos = torch.arange(0, 2048, 7)
    exact_old, exact_new = rk.cos_sin(old, pos, dtype=torch.float64), rk.cos_sin(new, pos, dtype=torch.float64)
    assert torch.equal(exact_old[0], exact_new[0])  # the same rotation ...
    hf_old, hf_new = rk.cos_sin(old, pos, precision="hf"), rk.cos_sin(new, pos, precision="hf")
    assert not torch.equal(hf_old[0], hf_new[0])  # ... rounded differently in float32


def test_yarn_445_uses_max_position_embeddings():
    cfg = _config("v4-yarn")
    assert rk.from_config(cfg, transformers_version="4.45.2").scaling.original_max_position_embeddings == 2048
    assert rk.from_config(cfg, transformers_version="4.57.6").scaling.original_max_position_embeddings == 512
    assert rk.from_config(cfg, transformers_version="5.2.0").scaling.original_max_position_embeddings == 512


def test_longrope_4x_reads_only_the_top_level_original():
    with pytest.raises(rk.RopeConfigError, match="factor is missing"):  # 4.x crashes on factor=None
        rk.from_config(_config("v4-longrope"), transformers_version="4.57.6")
    cfg = _config("v4-longrope-factor")
    for release in ("4.45.2", "4.57.6"):
        assert rk.from_config(cfg, transformers_version=release).scaling.original_max_position_embeddings == 2048
    assert rk.from_config(cfg, transformers_version="5.2.0").scaling.original_max_position_embeddings == 512
    top = {**cfg, "original_max_position_embeddings": 1024}
    assert rk.from_config(top, transformers_version="4.57.6").scaling.original_max_position_embeddings == 1024


def test_437_accepts_only_linear_and_dynamic_with_type_and_factor():
    for name in ("v4-yarn", "v4-llama3", "v4-longrope"):
        with pytest.raises(rk.RopeConfigError, match="not a RoPE scaling this transformers release knows"):
            rk.from_config(_config(name), transformers_version="4.37.2")
    bad = {**TINY, "rope_scaling": {"type": "linear", "factor": 2}}  # an int: 4.37 wants a float > 1
    with pytest.raises(rk.RopeConfigError, match="float > 1"):
        rk.from_config(bad, transformers_version="4.38.1")


def test_yarn_boundaries_451_and_456():
    """4.50 ranges over max_position_embeddings; 4.51-4.55 replace the dict's factor by
    max_position_embeddings / original (4.0 -> 2048 / 512 = 4.0 here, so use factor 2.0 to see it);
    from 4.56 the dict's factor stays.  truncate is read from 4.55 on."""
    cfg = _config("v4-yarn")
    cfg["rope_scaling"] = {**cfg["rope_scaling"], "factor": 2.0, "truncate": False}
    read = {r: rk.from_config(cfg, transformers_version=r).scaling for r in ("4.50.3", "4.51.0", "4.55.4", "4.56.0")}
    assert (read["4.50.3"].original_max_position_embeddings, read["4.50.3"].factor) == (2048, 2.0)
    assert (read["4.51.0"].original_max_position_embeddings, read["4.51.0"].factor) == (512, 2048 / 512)
    assert (read["4.55.4"].factor, read["4.56.0"].factor) == (2048 / 512, 2.0)
    assert read["4.51.0"].truncate and not read["4.55.4"].truncate and not read["4.56.0"].truncate


def test_longrope_picks_per_length_from_451():
    cfg = _config("v4-longrope-factor")
    old = rk.from_config(cfg, transformers_version="4.50.3").scaling
    new = rk.from_config(cfg, transformers_version="4.51.0").scaling
    assert old.short_factor == old.long_factor == tuple(LONGROPE_FACTORS["long_factor"])
    assert new.short_factor == tuple(LONGROPE_FACTORS["short_factor"])
