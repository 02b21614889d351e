"""ERNIE-4.5-VL read from its own config (no transformers module needed): its ``mrope_section`` is
``[height, width, time]``, height and width alternating pair by pair, then time; what its module
cannot run is refused naming the key.  Checked against transformers' own module where it exists."""

from __future__ import annotations

import json

import pytest

import ropekit as rk
from ropekit.cli import main as cli_main
from ropekit.dialects.hf_config import alternating_axes

#: the text config keys of a released ERNIE-4.5-VL (the 28B-A3B sizes transformers' config defaults to)
TEXT = {
    "model_type": "ernie4_5_vl_moe_text",
    "hidden_size": 2560,
    "num_attention_heads": 20,
    "num_key_value_heads": 4,
    "max_position_embeddings": 131072,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [16, 16, 32]},
}


def test_the_composite_config_dict_is_read_with_its_own_sections():
    spec = rk.from_config({"model_type": "ernie4_5_vl_moe", "text_config": dict(TEXT)})
    assert spec.layout == "interleaved" and spec.base == 500000.0 and spec.rotary_dim == 128
    assert spec.mrope_axes == (1, 2) * 16 + (0,) * 32 and spec.mrope_section == (32, 16, 16)
    assert spec.source is None  # read from the family table, not measured
    default = rk.from_config({**TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert default.mrope_axes == (1, 2) * 22 + (0,) * 20  # the module's default [22, 22, 20]


@pytest.mark.parametrize(
    "section, words",
    [
        ([20, 24, 20], "must be [h, h, t]"),
        ([22, 22, 0], "t >= 1"),
        ([22, 22, 22], "= rotary_dim / 2 = 64"),
        ([32, 32], "three integers"),
        ([22, "22", 20], "three integers"),
        ("22,22,20", "three integers"),
    ],
)
def test_sections_its_module_cannot_run_are_refused_naming_the_key(section, words):
    params = {"rope_type": "default", "rope_theta": 5e5, "mrope_section": section}
    with pytest.raises(rk.RopeConfigError, match="mrope_section") as info:
        rk.from_config({**TEXT, "rope_parameters": params})
    assert words in str(info.value)


def test_other_rope_types_are_refused_as_its_module_does():
    params = {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5, "mrope_section": [22, 22, 20]}
    with pytest.raises(rk.RopeConfigError, match="rope_type='linear'"):
        rk.from_config({**TEXT, "rope_parameters": params})


def test_alternating_axes_matches_transformers_own_module():
    """The module as the oracle: at per-axis positions, its tables equal ropekit's for the map."""
    pytest.importorskip("transformers")
    from ropekit.dialects.measured import TABLE_TOL, Probe

    try:
        from transformers import Ernie4_5_VLMoeTextConfig
    except ImportError:
        pytest.skip("ERNIE-4.5-VL is in transformers 5.x")
    for section in ([16, 16, 32], [30, 30, 4], [1, 1, 62]):
        params = {"rope_type": "default", "rope_theta": 5e5, "mrope_section": section}
        config = Ernie4_5_VLMoeTextConfig(rope_parameters=params)
        spec = rk.from_config(config)
        assert spec.mrope_axes == alternating_axes(section, 64)
        assert Probe(config).axes_err(spec) <= TABLE_TOL


def test_ropekit_spec_shows_the_axis_map(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "ernie4_5_vl_moe", "text_config": TEXT}))
    assert cli_main(["spec", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mrope_axes                 (1 2)x16 0x32" in out and "mrope_section              [32, 16, 16]" in out
    assert cli_main(["spec", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert rk.RopeSpec.from_dict(data) == rk.from_config(path)


def test_doctor_reads_a_multimodal_config_directory(tmp_path, capsys):
    """A composite (text_config) model directory: the doctor's transformers reading sizes heads from
    the text config (it raised AttributeError on the composite config's missing hidden_size)."""
    pytest.importorskip("transformers")
    try:
        from transformers import Ernie4_5_VLMoeConfig
    except ImportError:
        pytest.skip("ERNIE-4.5-VL is in transformers 5.x")
    params = {"rope_type": "default", "rope_theta": 5e5, "mrope_section": [16, 16, 32]}
    Ernie4_5_VLMoeConfig(text_config={"rope_parameters": params}).save_pretrained(tmp_path)
    assert cli_main(["doctor", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mrope=[32, 16, 16] axes (1 2)x16 0x32" in out and "no disagreement found" in out
