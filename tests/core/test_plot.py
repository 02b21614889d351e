"""ropekit.plot: the numbers are checked against formulas written here; the figures are checked
as files (a PNG appears atomically, bad input fails with a ropekit error)."""

from __future__ import annotations

import math
import os

import pytest
import torch

import ropekit as rk
from ropekit.cli import main as cli_main
from ropekit.plot import log_positions, plot_error, plot_wavelengths, table_error, wavelengths

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_wavelengths_of_plain_rope_follow_the_defining_formula():
    spec = rk.RopeSpec(head_dim=128, base=500000.0)
    expected = torch.tensor([2 * math.pi * 500000.0 ** (2 * i / 128) for i in range(64)], dtype=torch.float64)
    got = wavelengths(spec)
    assert got.dtype == torch.float64
    assert ((got - expected).abs() / expected).max().item() < 1e-14


def test_linear_scaling_stretches_every_wavelength_by_its_factor():
    plain = rk.RopeSpec(head_dim=64, base=10000.0)
    linear = plain.with_scaling(rk.Linear(factor=4.0))
    assert ((wavelengths(linear) / wavelengths(plain) - 4.0).abs().max().item()) < 1e-12


def test_llama3_stretches_only_the_long_wavelengths():
    # Llama 3.1: wavelengths above orig/low_freq_factor are stretched by `factor`, those below
    # orig/high_freq_factor are untouched, the band in between is blended (strictly in between).
    scaling = rk.Llama3(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    plain = rk.RopeSpec(head_dim=128, base=500000.0)
    ratio = wavelengths(plain.with_scaling(scaling)) / wavelengths(plain)
    base_wl = wavelengths(plain)
    long, short = base_wl > 8192, base_wl < 8192 / 4
    assert long.any() and short.any()
    assert (ratio[long] - 8.0).abs().max().item() < 1e-12
    assert (ratio[short] - 1.0).abs().max().item() < 1e-12
    band = ~(long | short)
    assert ((ratio[band] > 1.0) & (ratio[band] < 8.0)).all()


def test_log_positions_span_the_range_without_repeats():
    pos = log_positions(2**24, 48)
    assert pos[0].item() == 1 and pos[-1].item() == 2**24
    assert (pos[1:] > pos[:-1]).all()
    with pytest.raises(rk.RopePositionError, match="max_position=0"):
        log_positions(0)
    with pytest.raises(rk.RopePositionError, match="points=1"):
        log_positions(10, 1)


def test_table_error_measures_float32_angle_drift_and_exact_rounding():
    spec = rk.RopeSpec(head_dim=128, base=500000.0)
    positions = [4096, 2**20]
    # independent float64 truth and a float32-angle table written here (transformers' arithmetic)
    inv64 = torch.tensor([500000.0 ** (-2 * i / 128) for i in range(64)], dtype=torch.float64)
    angles64 = torch.tensor(positions, dtype=torch.float64)[:, None] * inv64
    inv32 = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.int64).float() / 128))  # float32 powers
    angles32 = torch.tensor(positions, dtype=torch.float32)[:, None] * inv32
    drift = torch.maximum(
        (angles32.cos().double() - angles64.cos()).abs(), (angles32.sin().double() - angles64.sin()).abs()
    )
    hf = table_error(spec, positions, precision="hf")
    assert torch.allclose(hf, drift.amax(-1), rtol=1e-6, atol=1e-7), (hf, drift.amax(-1))
    assert hf[1].item() > 1e-3  # float32 angles at 1M positions are visibly wrong
    exact = table_error(spec, positions, precision="exact")
    assert exact.max().item() <= 2.0**-24  # one rounding of values in [-1, 1]


def test_table_error_rejects_empty_positions():
    with pytest.raises(rk.RopePositionError, match="empty"):
        table_error(rk.RopeSpec(head_dim=8), torch.zeros(0, dtype=torch.int64))


def test_plots_are_written_atomically(tmp_path):
    specs = {"plain": rk.RopeSpec(head_dim=64), "x4": rk.RopeSpec(head_dim=64, scaling=rk.Linear(factor=4.0))}
    for draw, name in (
        (plot_wavelengths, "wl.png"),
        (lambda s, p: plot_error(s, p, max_position=4096, points=8), "err.png"),
    ):
        out = tmp_path / name
        assert draw(specs, str(out)) == str(out)
        assert out.read_bytes()[:8] == PNG_MAGIC
    assert sorted(os.listdir(tmp_path)) == ["err.png", "wl.png"]  # no temporary left behind


def test_plot_bad_input_is_a_ropekit_error(tmp_path):
    with pytest.raises(rk.RopeSpecError, match="non-empty dict"):
        plot_wavelengths({}, str(tmp_path / "x.png"))
    with pytest.raises(rk.RopeSpecError, match=r"specs\['a'\]"):
        plot_wavelengths({"a": 3}, str(tmp_path / "x.png"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_wavelengths({"a": rk.RopeSpec(head_dim=8)}, str(tmp_path / "missing" / "x.png"))


def test_cli_plot(tmp_path, capsys):
    out = tmp_path / "wl.png"
    assert cli_main(["plot", "wavelengths", "Llama-2-7B", "Llama-3.1-8B", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    out = tmp_path / "err.png"
    assert cli_main(["plot", "error", "Llama-3.1-8B", "--max-position", "65536", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()
    assert cli_main(["plot", "wavelengths", "No-Such-Model", "-o", str(tmp_path / "n.png")]) == 2
    err = capsys.readouterr().err
    assert "No-Such-Model" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        cli_main(["plot", "wavelengths", "Llama-2-7B"])  # -o is required
    assert exc.value.code == 2
