"""Malformed configs: one RopeConfigError naming the key / value / file, never a traceback from
json, yaml, the stdlib or torch, and never a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ropekit as rk
from ropekit.dialects.reading import read_json_file

SRC = Path(__file__).resolve().parents[2] / "src"
LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 4096}


def _error(config, *fragments):
    with pytest.raises(rk.RopeConfigError) as info:
        rk.from_config(config)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_list_rope_parameters_names_the_key():
    _error({**LLAMA, "rope_parameters": [{"rope_type": "linear"}]}, "rope_parameters", "JSON object")
    _error({**LLAMA, "rope_scaling": ["linear", 2.0]}, "rope_scaling")


@pytest.mark.parametrize(
    "name, payload, fragment",
    [
        ("latin1", b'{"model_type": "llama", "name": "caf\xe9"}', "not UTF-8"),
        ("deep", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        ("bigint", b'{"rope_theta": ' + b"7" * 5000 + b"}", "cannot convert"),
        ("array", b"[1, 2, 3]", "JSON list"),
        ("syntax", b'{"model_type": "llama",', "not valid JSON"),
    ],
)
def test_hostile_json_files(tmp_path, name, payload, fragment):
    path = tmp_path / f"{name}.json"
    path.write_bytes(payload)
    _error(str(path), fragment, str(path))


def test_hostile_yaml_files(tmp_path):
    pytest.importorskip("yaml")
    deep = tmp_path / "model_config.yaml"
    deep.write_text("a: " + "[" * 50_000 + "]" * 50_000)
    _error(str(deep), "nested too deeply")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\nn_embd: 64\n")
    _error(str(latin), "not UTF-8")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("rope_theta", 10**400, "too large"),
        ("hidden_size", 10**30, "too large"),
        ("max_position_embeddings", 2**70, "too large"),
        ("rope_theta", float("nan"), "finite"),
    ],
)
def test_huge_and_non_finite_numbers(key, value, fragment):
    _error({**LLAMA, key: value}, key, fragment)


def test_fifo_is_refused_before_open(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(rk.RopeConfigError, match="not a regular file"):
        read_json_file(fifo)
    # the CLI in a subprocess with a timeout: before the fix it blocked in open() forever
    run = subprocess.run(
        [sys.executable, "-m", "ropekit", "spec", str(fifo)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert run.returncode == 2 and "not a regular file" in run.stderr and "Traceback" not in run.stderr


def test_one_json_reader_in_the_project():
    """json.load / json.loads appear only in dialects/reading.py (and RopeSpec.from_json, which
    parses a string the caller holds, not a file)."""
    offenders = []
    for path in (SRC / "ropekit").rglob("*.py"):
        text = path.read_text()
        if ("json.load(" in text or "json.loads(" in text) and path.name not in ("reading.py", "spec.py"):
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_KEYS = st.sampled_from(
    [
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "hidden_size",
        "num_attention_heads",
        "head_dim",
        "partial_rotary_factor",
        "max_position_embeddings",
        "original_max_position_embeddings",
        "layer_types",
        "text_config",
        "ropekit_layout",
    ]
)


@pytest.mark.filterwarnings("ignore::ropekit.errors.RopeConfigWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _JSON, max_size=4))
def test_any_values_give_a_spec_or_one_config_error(extra):
    config = json.loads(json.dumps({**LLAMA, **extra}, allow_nan=True))
    try:
        spec = rk.from_config(config)
    except rk.RopeConfigError:
        return
    assert isinstance(spec, rk.RopeSpec)
