"""``ropekit convert`` on a NanoChat checkpoint (angle_sign=-1): a layout change is a row permutation
that keeps the direction (the converted model still turns by -angle, and says so through the
family and the ``ropekit_layout`` marker); the Meta form, which turns by +angle, is refused before
anything is written."""

import json

import pytest
import torch

import ropekit as rk

from convert_cli import cli_error

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import tiny_models as tm  # noqa: E402

pytestmark = pytest.mark.skipif(not tm.has_family("nanochat"), reason="this transformers release has no nanochat")


def _logits(path, ids, patch=False):
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    if patch:
        rk.hf.patch(model)
    with torch.no_grad():
        return tm.output(model, ids)


def test_interleaved_conversion_keeps_the_direction(tmp_path):
    src, dst = tm.saved(tmp_path / "nano", "nanochat"), tmp_path / "inter"
    report = rk.convert(src, dst, layout="interleaved", verify=True, progress=False, log=lambda _: None)
    assert report.permuted == 4 and report.verify_max_rel <= 1e-9
    assert json.loads((dst / "config.json").read_text())["ropekit_layout"] == "interleaved"
    spec = rk.from_config(dst)
    assert (spec.layout, spec.angle_sign) == ("interleaved", -1)
    ids = torch.randint(3, tm.VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = _logits(src, ids)
    rel = lambda a: ((a - reference).abs().max() / reference.abs().max()).item()  # noqa: E731
    assert rel(_logits(dst, ids)) > 1e-3  # stock transformers runs the permuted rows wrong
    assert rel(_logits(dst, ids, patch=True)) <= 1e-5  # ropekit.hf.patch reads the marker and the direction


def test_the_meta_form_is_refused_before_writing(tmp_path, capsys):
    src, dst = tm.saved(tmp_path / "nano", "nanochat"), tmp_path / "meta"
    assert "has no Meta checkpoint form" in cli_error(capsys, src, dst, "--to", "meta")
    assert not dst.exists()
