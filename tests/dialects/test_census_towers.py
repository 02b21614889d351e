"""The tower census: every rotary module of another tower (vision, video, audio, DiT, talker) in the
installed transformers is read by ``from_config`` of the config it takes, or refused for a reason
written down here.  The language-model census (``test_census.py``) leaves these out; a vision
tower's RoPE (Qwen2-VL's, GLM-4V's, ...) is an axial one over a grid of patches (``RopeSpec.axial``),
an audio or DiT tower's is a 1-D RoPE over its frames.

For each, the family's own module is called (on a grid of patches for a vision tower, through
``dialects/image_rotaries.py``) and its own apply function run; ropekit's spec must give the same
tables in hf precision and the same q.k scores.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import logging
import warnings

import pytest

import ropekit as rk
from ropekit.dialects.measured import SCORE_TOL, TABLE_TOL, Probe, family_layer_types
from ropekit.dialects.rotary_modules import OTHER_TOWERS
from ropekit.errors import RopeConfigError
from ropekit.tables import mrope_axis_of_columns

transformers = pytest.importorskip("transformers")

#: class -> words of the RopeConfigError that refuses it (transformers 5.24): no RopeSpec describes it
REFUSED = {
    "Gemma4VisionRotaryEmbedding": "a half-layout RoPE of its own",
    "PixtralVisionRotaryEmbedding": "the odd entries of one head_dim ladder",
    "Llama4VisionRotaryEmbedding": "complex freqs_ci over the one patch grid",
}

#: class -> how the config it is built from comes out of the default of the config class it takes,
#: and why: the default does not build it, the family's own models build it from this
EDITS = {
    # annotated with the vision config; DeepseekOcr2VisionEncoder builds it from encoder_config
    "DeepseekOcr2VisionRotaryEmbedding": lambda config: config.encoder_config,
    # 2048 / 28 heads gives head_dim 73 (odd), as for the thinker in test_census.CONSISTENT
    "Qwen3OmniMoeTalkerRotaryEmbedding": lambda config: _with(config, head_dim=128),
}


def _with(config, **keys):
    config = copy.deepcopy(config)
    text = config.get_text_config()
    for key, value in keys.items():
        setattr(text, key, value)
    return config


@functools.cache
def towers() -> dict:
    """Tower rotary class name -> (class, the config to read), for every such class of the installed
    transformers whose constructor takes a config class that has a default."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    out = {}
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for model_type in list(CONFIG_MAPPING.keys()):
                name = CONFIG_MAPPING[model_type].__module__.replace(".configuration_", ".modeling_")
                try:
                    modeling = importlib.import_module(name)
                except Exception:
                    continue
                for cls_name, cls in vars(modeling).items():
                    if not (
                        isinstance(cls, type)
                        and cls_name.endswith("RotaryEmbedding")
                        and cls.__module__ == modeling.__name__
                        and any(word in cls_name for word in OTHER_TOWERS)
                        and cls_name not in out
                    ):
                        continue
                    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
                    takes = params[0].annotation if params else None
                    if not isinstance(takes, type):
                        continue
                    try:
                        config = takes()
                    except Exception:
                        continue
                    out[cls_name] = (cls, EDITS.get(cls_name, lambda c: c)(config))
    finally:
        logging.disable(logging.NOTSET)
    return out


def _check(cls, config) -> str:
    problems = []
    for layer_type in family_layer_types(config) or [None]:
        try:
            spec = rk.from_config(config, layer_type=layer_type)
            probe = Probe(config, layer_type)
        except RopeConfigError as exc:
            return str(exc)
        if probe.rotary_class is not cls:
            return f"the config reads {probe.rotary_class.__name__}, not {cls.__name__}"
        table, score, axes = probe.table_err(spec), probe.score_err(spec), probe.axes_err(spec)
        if not (table <= TABLE_TOL and score <= SCORE_TOL and axes <= TABLE_TOL):
            problems.append(f"[{layer_type}] {spec.describe()}: table err {table:.3g}, q.k err {score:.3g}")
    return "; ".join(problems)


@functools.cache
def results() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: _check(cls, config) for name, (cls, config) in towers().items()}


def test_every_tower_is_read_or_refused():
    res = results()
    assert len(res) >= 40, sorted(res)
    assert "Qwen2VLVisionRotaryEmbedding" in res and "PeAudioEncoderRotaryEmbedding" in res
    unexpected = {n: why for n, why in res.items() if why and not (n in REFUSED and REFUSED[n] in why)}
    assert not unexpected, "\n".join(f"{n}: {why}" for n, why in sorted(unexpected.items()))
    stale = sorted(n for n in REFUSED if n in res and not res[n])
    assert not stale, f"read now, drop them from REFUSED: {stale}"


#: (class, layout, axis of each pair) read from each module's code by hand, not from ropekit
ARRANGEMENTS = {
    "Qwen2VLVisionRotaryEmbedding": ("half", (0,) * 20 + (1,) * 20),  # cat(h, w), duplicated by cat
    "Kimi_K25VisionRotaryEmbedding": ("half", (1, 0) * 18),  # width and height alternate, width first
    "Inkling2VisionRotaryEmbedding": ("interleaved", (1,) * 16 + (0,) * 16),  # width half first
}


@pytest.mark.parametrize("name", sorted(ARRANGEMENTS))
def test_vision_towers_are_axial_with_their_own_arrangement(name):
    """The arrangement each module's code has, exact against the module; one ladder for both axes,
    the axes swapped, the other layout and a 0.1% base error each fail the tolerances."""
    layout, axes = ARRANGEMENTS[name]
    _, config = towers()[name]
    spec = rk.from_config(config)
    probe = Probe(config)
    assert spec.axial and spec.layout == layout and tuple(mrope_axis_of_columns(spec).tolist()) == axes
    assert probe.table_err(spec) <= TABLE_TOL and probe.score_err(spec) <= SCORE_TOL
    assert probe.table_err(spec.replace(axial=False)) > TABLE_TOL
    swapped = spec.replace(mrope_section=None, mrope_interleaved=False, mrope_axes=[1 - a for a in axes])
    assert probe.table_err(swapped) > TABLE_TOL
    assert probe.score_err(spec.with_layout("half" if layout == "interleaved" else "interleaved")) > SCORE_TOL
    assert probe.table_err(spec.replace(base=spec.base * 1.001)) > TABLE_TOL


def test_a_vision_config_is_read_as_its_tower_not_as_the_language_model():
    """Qwen2-VL's vision_config once picked the language model's rotary class and failed inside it."""
    config = transformers.Qwen2VLConfig(vision_config={"embed_dim": 64, "num_heads": 4, "hidden_size": 64})
    spec = rk.from_config(config.vision_config)
    assert spec.axial and spec.head_dim == 16 and "Qwen2VLVisionRotaryEmbedding" in spec.source
    assert not rk.from_config(config).axial  # the composite config still reads the language model
