"""Malformed configs and params reach the user as one line naming the key and its value (exit 2),
never as a traceback and never as a conversion that guessed (``num_key_value_heads=2.5`` was once
read as 2 and converted, exit 0)."""

import json

import pytest
import torch

from checkpoints import make_hf_dir
from convert_cli import cli_error


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"num_attention_heads": 4.5}, "num_attention_heads=4.5"),
        ({"num_attention_heads": "4"}, "num_attention_heads='4'"),
        ({"num_key_value_heads": 2.5}, "num_key_value_heads=2.5"),
        ({"num_key_value_heads": "2"}, "num_key_value_heads='2'"),
        ({"num_key_value_heads": True}, "num_key_value_heads=True"),
        ({"num_hidden_layers": "2"}, "num_hidden_layers='2'"),
        ({"rope_parameters": [1, 2]}, "rope_parameters=[1, 2]"),
        ({"partial_rotary_factor": "half"}, "partial_rotary_factor='half'"),
        ({"partial_rotary_factor": 0}, "partial_rotary_factor=0"),
    ],
)
def test_bad_config_values_are_one_line(tmp_path, capsys, over, needle):
    src = make_hf_dir(tmp_path / "src", **over)
    err = cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")
    assert needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize(
    "text, needle", [(b"\xff\xfe{}", "not valid UTF-8 JSON"), (b"[" * 100000 + b"]" * 100000, "nested too deeply")]
)
def test_unreadable_config_json_is_one_line(tmp_path, capsys, text, needle):
    src = make_hf_dir(tmp_path / "src")
    (src / "config.json").write_bytes(text)
    assert needle in cli_error(capsys, src, tmp_path / "dst", "--layout", "interleaved")


@pytest.mark.parametrize("n_kv", [2.5, "2", False])
def test_bad_meta_params_are_one_line(tmp_path, capsys, n_kv):
    meta = tmp_path / "meta"
    meta.mkdir()
    torch.save({"layers.0.attention.wq.weight": torch.zeros(32, 32)}, meta / "consolidated.00.pth")
    (meta / "params.json").write_text(json.dumps({"dim": 32, "n_heads": 4, "n_layers": 1, "n_kv_heads": n_kv}))
    assert f"n_kv_heads={n_kv!r}" in cli_error(capsys, meta, tmp_path / "hf", "--to", "hf")
