"""Validation as strict as the INSTALLED transformers release's own, with that release as the oracle.

The same config.json contents go to the release's own ``LlamaConfig`` (which validates them as it
loads them) and to ``ropekit.from_config``; both must come to the same verdict: refused, or
accepted with the same warnings -- transformers logs "implicit factor" (a yarn factor that
contradicts the lengths, 4.56 and later) and "Unrecognized keys" (keys of another rope type, or
mRoPE keys on a text-only family, 4.43 and later), ropekit warns ``RopeConfigWarning``.  Run under
every release of the matrix:

    PYTHONPATH=.deps/transformers-4.57.6 python -m pytest -m release_matrix tests/dialects
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import pytest
import torch

import ropekit as rk
from ropekit.dialects.releases import installed_release

import tiny_models as tm

transformers = pytest.importorskip("transformers")
RELEASE = installed_release()

TINY = tm.TINY_LLAMA_JSON
YARN = {"rope_type": "yarn", "factor": 4.0}
#: rope_scaling dicts (every release reads that key; 5.x moves it to rope_parameters)
CASES = {
    "yarn-factor-matches-lengths": {**YARN, "original_max_position_embeddings": 512},
    "yarn-factor-contradicts-lengths": {**YARN, "factor": 2.0, "original_max_position_embeddings": 512},
    "yarn-original-is-max-position": {**YARN, "original_max_position_embeddings": 2048},
    "yarn-no-original": dict(YARN),
    "yarn-with-short-factor": {**YARN, "original_max_position_embeddings": 512, "short_factor": [1.0] * 16},
    "linear-with-beta-fast": {"rope_type": "linear", "factor": 2.0, "beta_fast": 16.0},
    "default-with-mrope-section": {"rope_type": "default", "mrope_section": [4, 6, 6]},
    "linear-v4-form": {"type": "linear", "factor": 2.0},
    "yarn-with-mscale": {**YARN, "mscale": 1.0, "mscale_all_dim": 0.5},
    "yarn-with-truncate": {**YARN, "truncate": False},
    "llama3-no-original": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    "llama3-complete": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 512,
    },
    "llama3-original-beyond-max": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 4096,
    },
    "longrope-no-original": {
        "rope_type": "longrope",
        "factor": 4.0,
        "short_factor": [1.0] * 16,
        "long_factor": [2.0] * 16,
    },
}


@contextlib.contextmanager
def _transformers_log():
    """What transformers logs while the block runs, whatever verbosity other tests left it at."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_rope_utils", "transformers.configuration_utils")]
    levels, disabled = [lg.level for lg in loggers], logging.root.manager.disable
    logging.disable(logging.NOTSET)
    once = getattr(logging.Logger, "warning_once", None)
    if hasattr(once, "cache_clear"):  # transformers says some warnings once per process
        once.cache_clear()
    for lg in loggers:
        lg.setLevel(logging.WARNING)
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        logging.disable(disabled)


def _kinds(messages) -> set[str]:
    kinds = set()
    for text in messages:
        if "implicit factor" in text:
            kinds.add("implicit factor")
        if "Unrecognized keys" in text or "do not belong" in text:
            kinds.add("unrecognized keys")
        if "less than max_position_embeddings" in text or "is not less than" in text:
            kinds.add("original not below max")
    return kinds


def transformers_verdict(config_dict):
    """'raises', or the kinds of warning the installed release logs while loading the config."""
    keys = {k: v for k, v in copy.deepcopy(config_dict).items() if k != "model_type"}
    with _transformers_log() as records:
        try:
            transformers.LlamaConfig(**keys)
        except (KeyError, ValueError, TypeError):
            return "raises"
    return _kinds(r.getMessage() for r in records)


def ropekit_verdict(config_dict):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rk.from_config(copy.deepcopy(config_dict))
        except rk.RopeConfigError:
            return "raises"
    return _kinds(str(w.message) for w in caught if issubclass(w.category, rk.RopeConfigWarning))


@pytest.mark.release_matrix
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_same_verdict_as_the_installed_release(name):
    config_dict = {**TINY, "rope_theta": 10000.0, "rope_scaling": CASES[name]}
    assert ropekit_verdict(config_dict) == transformers_verdict(config_dict), name


@pytest.mark.release_matrix
def test_the_oracle_tells_the_cases_apart():
    """The comparison can fail: the cases do not all get one verdict under any release."""
    verdicts = {name: transformers_verdict({**TINY, "rope_scaling": CASES[name]}) for name in CASES}
    assert len({str(v) for v in verdicts.values()}) >= 2, verdicts
    if RELEASE >= (4, 56, 0):
        assert verdicts["yarn-factor-contradicts-lengths"] == {"implicit factor"}
    if (4, 43, 0) <= RELEASE:
        assert verdicts["default-with-mrope-section"] == {"unrecognized keys"}


@pytest.mark.release_matrix
@pytest.mark.parametrize("extra", [{}, {"mscale": 1.0, "mscale_all_dim": 0.5}, {"mscale": 0.7}])
def test_yarn_attention_factor_is_the_installed_release(extra):
    """mscale / mscale_all_dim set yarn's attention factor from 4.51; before, 0.1 ln(factor) + 1."""
    if RELEASE < (4, 43, 0):
        pytest.skip("no yarn before 4.43")
    from transformers.models.llama import modeling_llama as ml

    config_dict = {**TINY, "rope_theta": 10000.0, "rope_scaling": {**YARN, **extra}}
    with _transformers_log():  # unrecognized keys are logged by some releases: not the point here
        config = transformers.LlamaConfig(**{k: v for k, v in copy.deepcopy(config_dict).items() if k != "model_type"})
    theirs = ml.LlamaRotaryEmbedding(config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rk.RopeConfigWarning)
        inv, factor = rk.inv_freq(rk.from_config(config_dict), precision="hf")
    assert factor == pytest.approx(theirs.attention_scaling, rel=1e-12)
    assert torch.equal(inv, theirs.inv_freq)
