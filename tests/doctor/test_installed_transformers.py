"""The installed transformers' RoPE measured through its own modeling code, across releases: each
release runs in a subprocess with its own transformers first on PYTHONPATH (scripts/setup.sh puts
them in .deps/)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from releases import release_dir

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import ropekit as rk
from ropekit.doctor.installed_transformers import transformers_rope_fn
fn, head_dim, version = transformers_rope_fn({"model_type": "gpt_neox", "hidden_size": 64,
                                              "num_attention_heads": 4, "rotary_pct": 0.25})
print(version, rk.fingerprint(fn, head_dim, max_position=4096).spec.describe())
"""


@pytest.mark.parametrize("version", ["4.37.2", "4.45.2", "4.57.6"])
def test_partial_rotary_is_measured_as_each_release_runs_it(version):
    """gpt_neox rotary_pct 0.25 of head_dim 16: 4 rotating dims.  Releases before 4.48 slice the
    rotary dims in the attention module, not in the apply function: a measurement that hands the
    apply function the whole head (a deliberately wrong one) raises a shape error there."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(release_dir(version)), str(ROOT / "src"))))
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [version, "half", "r=4/16", "base=10000"], res.stdout


def test_an_image_rotary_is_not_fingerprinted_as_a_token_rope():
    """MLCD's module takes [N, 2] patch ids: fed 1-D positions it once read as 'no RoPE', and the
    doctor then found no disagreement with ropekit's axial reading. Now the 1-D black box refuses."""
    from ropekit.doctor.installed_transformers import transformers_rope_fn
    from ropekit.errors import RopeConfigError

    pytest.importorskip("transformers")
    config = {"model_type": "mlcd_vision_model", "hidden_size": 64, "num_attention_heads": 4}
    with pytest.raises(RopeConfigError, match="axial image rotary over a grid of patches"):
        transformers_rope_fn(config)
