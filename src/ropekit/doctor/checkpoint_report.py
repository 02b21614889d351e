"""checkpoint_report: ``ropekit doctor MODEL_DIR`` — the RoPE each framework here would run for a
checkpoint, and every way they disagree.

Readings: ropekit's (``ropekit.from_config``), the installed transformers' (measured from its own
modeling code, ``installed_transformers``), and for a GGUF file the one its metadata states.  Then
the checkpoint itself: the ``ropekit_layout`` marker ``ropekit convert --layout interleaved`` writes
(stock transformers ignores it and runs such a checkpoint wrong), stored ``inv_freq`` tensors
checked against the spec, config keys the installed release ignores, and the layout the trained
q/k weights are in (``infer_layout``).  Each disagreement comes with its fix.  The text is made by
``report_text``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from ..errors import MissingDependencyError, RopeError
from .weights import has_qk_weights, is_gguf, read_json

__all__ = ["Finding", "Reading", "CheckpointReport", "doctor_checkpoint"]


#: transformers' reading of a LitGPT directory without an HF config beside it
NO_HF_CONFIG = (
    "does not load this directory (no config.json, only LitGPT's model_config.yaml); "
    "LitGPT's convert_from_litgpt writes a checkpoint transformers loads"
)


@dataclass
class Reading:
    framework: str  # "ropekit", "transformers 5.24.0", "GGUF metadata"
    spec: object | None  # RopeSpec
    text: str  # the spec in one line, or why there is none


@dataclass
class Finding:
    kind: str  # disagreement | marker | inv_freq | ignored_keys | layout
    text: str
    fix: str | None = None
    problem: bool = True  # False: reported for information, nothing to fix


@dataclass
class CheckpointReport:
    path: str
    readings: list[Reading] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    layout: object | None = None  # LayoutResult

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem]


def _ropekit_reading(path: str, layer_type: str | None = None) -> Reading:
    import warnings

    from ..dialects import from_config
    from ..dialects.releases import NEWEST, release_text
    from ..errors import RopeConfigWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RopeConfigWarning)
            spec = from_config(path, layer_type=layer_type)
        if any(issubclass(w.category, RopeConfigWarning) for w in caught):
            # the installed release ignores some of the config's RoPE keys: ropekit's row is the
            # config as written (the newest release's rules); the transformers row is what the
            # installed release runs, and the "ignored_keys" finding names the keys it drops
            spec = from_config(path, layer_type=layer_type, transformers_version=release_text(NEWEST))
    except RopeError as exc:
        return Reading(_labelled("ropekit", layer_type), None, f"cannot read: {exc}")
    return Reading(_labelled("ropekit", layer_type), spec, spec.describe())


def _labelled(framework: str, layer_type: str | None) -> str:
    return framework if layer_type is None else f"{framework} [{layer_type}]"


def _layer_types(path: str) -> list:
    """The layer types a config keeps a RoPE for ([None]: one RoPE for every layer)."""
    from ..dialects import layer_types_of

    try:
        return list(layer_types_of(path)) or [None]
    except RopeError:
        return [None]


def _measured_reading(framework: str, build, source, max_position: int):
    """(Reading, fn) of a framework measured through its own code: ``build(source)`` gives
    ``(fn, head_dim, version)``; (Reading without spec, None) when it is missing or refuses."""
    from .probe import fingerprint

    try:
        fn, head_dim, version = build(source)
    except MissingDependencyError:
        return Reading(framework, None, "not installed"), None
    except RopeError as exc:
        return Reading(framework, None, f"cannot build: {exc}"), None
    fp = fingerprint(fn, head_dim, max_position=max_position)
    text = fp.summary() if fp.spec is not None else f"no RoPE: {fp.reason}"
    # the reading's spec is the whole rotation, its measured direction included (NanoChat: -1)
    spec = None if fp.spec is None else fp.spec.replace(angle_sign=fp.direction)
    return Reading(f"{framework} {version}", spec, text), fn


def _transformers_reading(path: str, max_position: int, layer_type: str | None = None):
    """(Reading, fn) of the installed transformers, or (Reading without spec, None)."""
    from .installed_transformers import transformers_rope_fn

    reading, fn = _measured_reading(
        "transformers", lambda p: transformers_rope_fn(p, layer_type=layer_type), path, max_position
    )
    reading.framework = _labelled(reading.framework, layer_type)
    return reading, fn


def compare_readings(
    report: CheckpointReport, ropekit: Reading, hf: Reading, hf_fn, max_position: int, *, what: str = "ropekit"
) -> None:
    """A finding when framework ``hf`` (measured as ``hf_fn``) and the spec ``ropekit`` part."""
    from .comparison import compare
    from .explain import same_frequencies
    from .verification import spec_rope_fn

    if ropekit.spec is None or hf.spec is None or hf_fn is None:
        return
    rep = compare(
        hf_fn,
        spec_rope_fn(ropekit.spec, precision="hf"),
        ropekit.spec.head_dim,
        max_position=max_position,
        names=(hf.framework, what),
    )
    if rep.equivalent:
        return
    if same_frequencies(hf.spec, ropekit.spec):
        text = (
            f"{hf.framework} and {what} describe the same RoPE (frequencies equal to 1e-6) but their float32 "
            f"tables differ by up to {rep.max_abs_err:.2g} over positions 0..{max_position}: the arithmetic, "
            "not the RoPE"
        )
        fix = f"none for the RoPE's meaning; to reproduce {hf.framework} bit for bit, run it with {hf.framework}"
        report.findings.append(Finding("precision", text, fix, problem=False))
        return
    text = f"{hf.framework} and {what} compute different RoPEs for this config: {rep.explanation}"
    fix = rep.fix
    report.findings.append(Finding("disagreement", text, fix))


def _config_findings(report: CheckpointReport, cfg: dict, hf: Reading) -> None:
    marker = cfg.get("ropekit_layout")
    if marker == "interleaved":
        report.findings.append(
            Finding(
                "marker",
                "ropekit_layout='interleaved': this checkpoint's q/k rows are in the interleaved order; stock "
                "transformers ignores the marker, rotates them as 'half' and runs the model WRONG",
                "load it with ropekit.hf.patch(model) (it reads the marker), or convert it back: "
                "ropekit convert SRC DST --layout half",
            )
        )
    found = re.match(r"transformers (\d+)\.[^ ]*", hf.framework)  # no version: it could not be built
    version = found.group(0).split(" ")[1] if found else None
    if version and int(found.group(1)) < 5 and "rope_parameters" in cfg:
        base = f"base {hf.spec.base:g}" if hf.spec is not None else "its defaults"
        report.findings.append(
            Finding(
                "ignored_keys",
                f"transformers {version} ignores 'rope_parameters' (a transformers 5 key): it runs {base}",
                "for transformers 4.x, also write rope_theta (and rope_scaling) at the top level of config.json, "
                "or install transformers>=5",
            )
        )


def _inv_freq_findings(report: CheckpointReport, path: str, spec) -> None:
    from ..frequencies import inv_freq

    safetensors = None
    try:
        import safetensors
    except ImportError:
        return
    want = inv_freq(spec)[0]
    for name in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        with safetensors.safe_open(os.path.join(path, name), framework="pt") as fh:
            for key in fh.keys():
                if not key.endswith("inv_freq"):
                    continue
                stored = fh.get_tensor(key).double()
                if stored.shape != want.shape or not torch.isfinite(stored).all():
                    report.findings.append(Finding("inv_freq", f"{key}: shape {list(stored.shape)} / non-finite"))
                    continue
                rel = ((stored - want).abs() / want).max().item()
                ok = rel <= 2.0**-23
                report.findings.append(
                    Finding(
                        "inv_freq",
                        f"stored {key} {'matches' if ok else 'differs from'} the spec (max relative error {rel:.2g})",
                        None
                        if ok
                        else "drop the stored inv_freq (transformers recomputes it) or rewrite it in float32",
                        problem=not ok,
                    )
                )
                return  # one layer's copy says it; the others are copies


def _layout_finding(report: CheckpointReport, path: str, cfg_source, spec) -> None:
    from .infer_layout import infer_layout

    try:
        res = infer_layout(path, cfg_source)
    except RopeError:
        return
    report.layout = res
    expected = "interleaved" if (is_gguf(path) or (spec is not None and spec.layout == "interleaved")) else "half"
    if res.layout == "unknown":
        text = f"the q/k weights show no layout: {res.reason}"
    else:
        text = f"the trained q/k weights: {res.summary()}"
    problem = res.layout not in ("unknown", expected)
    fix = None
    if problem:
        fix = (
            f"the weights are {res.layout} but will be rotated as {expected}: permute q/k rows with "
            f"ropekit.permute_qk(w, ..., src='{res.layout}', dst='{expected}') or record the layout "
            f"(ropekit_layout)"
        )
    report.findings.append(Finding("layout", text, fix, problem=problem))
    if res.contradiction:
        report.findings.append(
            Finding(
                "rotary_dim",
                f"the trained q/k weights contradict the config: {res.contradiction} ({res.rotary_dim_note})",
                "check partial_rotary_factor / rotary_dim in the config against how the model was trained",
            )
        )


def _litgpt_reading(path: str, max_position: int):
    """(Reading, fn) of the installed LitGPT for a LitGPT directory (``framework_readings``)."""
    from .framework_readings import litgpt_rope_fn

    return _measured_reading("litgpt", litgpt_rope_fn, path, max_position)


def _gguf_report(report: CheckpointReport, path: str, max_position: int, weights: bool) -> None:
    """A GGUF file: the RoPE its metadata states, the one transformers' gguf loader runs for it."""
    from .framework_readings import gguf_metadata_spec, gguf_transformers_config
    from .installed_transformers import transformers_rope_fn
    from .weights import gguf_metadata

    try:
        spec = gguf_metadata_spec(gguf_metadata(path))
        stated = Reading("GGUF metadata", spec, spec.describe() + " (llama.cpp rotates its stored rows interleaved)")
    except RopeError as exc:
        stated = Reading("GGUF metadata", None, f"cannot read: {exc}")
    report.readings.append(stated)
    hf, fn = _measured_reading(
        "transformers", lambda p: transformers_rope_fn(gguf_transformers_config(p)), path, max_position
    )
    hf.framework += " (gguf loader)"
    report.readings.append(hf)
    compare_readings(report, stated, hf, fn, max_position, what="the GGUF metadata")
    if weights:
        _layout_finding(report, path, None, None)


def doctor_checkpoint(path, *, max_position: int = 2**16, weights: bool = True) -> CheckpointReport:
    """Every framework's reading of a checkpoint's RoPE and every disagreement (see the module doc)."""
    path = os.fspath(path)
    report = CheckpointReport(path)
    if is_gguf(path):
        _gguf_report(report, path, max_position, weights)
        return report
    cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    cfg = read_json(cfg_path) if cfg_path.endswith(".json") and os.path.isfile(cfg_path) else {}
    types = _layer_types(path)
    ropekit = None  # the first layer type's reading: the one the weights' findings use
    for i, layer_type in enumerate(types):  # one RoPE per layer type (Gemma 2/3 ...), else one
        reading = _ropekit_reading(path, layer_type)
        report.readings.append(reading)
        ropekit = ropekit or reading
        if "model_type" in cfg:
            hf, hf_fn = _transformers_reading(cfg_path, max_position, layer_type)
            report.readings.append(hf)
            compare_readings(report, reading, hf, hf_fn, max_position)
            if i == 0:
                _config_findings(report, cfg, hf)
    if os.path.isfile(os.path.join(path, "model_config.yaml")):
        lit, lit_fn = _litgpt_reading(path, max_position)
        report.readings.append(lit)
        compare_readings(report, ropekit, lit, lit_fn, max_position)
        if "model_type" not in cfg:  # said, not left out: a reader may expect transformers' line
            report.readings.append(Reading("transformers", None, NO_HF_CONFIG))
    if os.path.isdir(path) and ropekit.spec is not None:
        if len(types) == 1:  # stored inv_freq of one RoPE (per-layer-type ones: not checked here)
            _inv_freq_findings(report, path, ropekit.spec)
        if weights and has_qk_weights(path):
            _layout_finding(report, path, path, ropekit.spec)
    return report
