"""``doctor MODEL_DIR`` on a NanoChat checkpoint (angle_sign=-1): ropekit's reading and the installed
transformers' (measured from its own rotary module and apply function) both turn by -angle and agree;
a reading in the wrong direction is a disagreement, never "the same RoPE up to arithmetic"."""

import pytest

from ropekit.doctor.checkpoint_report import doctor_checkpoint

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import tiny_models as tm  # noqa: E402

pytestmark = pytest.mark.skipif(not tm.has_family("nanochat"), reason="this transformers release has no nanochat")


def _kinds(report):
    return [f.kind for f in report.findings]


def test_both_readings_turn_by_minus_angle_and_agree(tmp_path):
    report = doctor_checkpoint(tm.saved(tmp_path / "nano", "nanochat"), max_position=4096, weights=False)
    ropekit, hf = report.readings[:2]
    assert ropekit.spec.angle_sign == -1 and "angle_sign=-1" in ropekit.text
    assert hf.spec.angle_sign == -1 and "direction=-1" in hf.text
    assert not {"disagreement", "precision"} & set(_kinds(report)), [f.text for f in report.findings]


def test_a_reading_in_the_wrong_direction_is_a_disagreement(tmp_path, monkeypatch):
    import ropekit.dialects

    path = tm.saved(tmp_path / "nano", "nanochat")
    right = ropekit.dialects.from_config
    monkeypatch.setattr(ropekit.dialects, "from_config", lambda *a, **k: right(*a, **k).turning_forward())
    report = doctor_checkpoint(path, max_position=4096, weights=False)
    assert "disagreement" in _kinds(report) and "precision" not in _kinds(report)
