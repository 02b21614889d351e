"""Run transformers' own tests/utils/test_modeling_rope_utils.py against ropekit through a shim.

The test file is transformers' (Apache-2.0), not ropekit's: it is never part of this project.
Pass its path; run it under the transformers release the file was written for, e.g.

    PYTHONPATH=.deps/transformers-4.45.2 .venv/bin/python scripts/rope_utils_shim.py \\
        /path/to/test_modeling_rope_utils.py [--oracle]

The shim replaces, in this process only, ``transformers.ROPE_INIT_FUNCTIONS`` (rope type ->
``fn(config, device, seq_len, **legacy_kwargs) -> (inv_freq, attention_factor)``) and
``transformers.modeling_rope_utils.rope_config_validation`` by ropekit: ``from_config`` reads the
config as the installed release does, ``inv_freq(spec, precision="hf")`` gives the frequencies,
and a refused config raises ``KeyError`` where ropekit says a key is missing (transformers'
exception for that case), ``ValueError`` otherwise.  ``--oracle`` runs the file on transformers
itself, to show the file passes there.  Prints one line per test and the pass/fail counts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import unittest
import warnings

# the ropekit of this tree, not whichever one the environment has installed
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))


def _legacy_spec(rope_type: str, kwargs: dict):
    """The 4.4x keyword form: dim, max_position_embeddings, base (and factor)."""
    import ropekit as rk

    scaling = None
    if rope_type == "linear":
        scaling = rk.Linear(factor=kwargs["factor"])
    elif rope_type == "dynamic":
        scaling = rk.Dynamic(
            factor=kwargs["factor"], original_max_position_embeddings=kwargs["max_position_embeddings"]
        )
    elif rope_type != "default":
        raise ValueError(f"the legacy keyword form has no rope_type={rope_type!r}")
    return rk.RopeSpec(head_dim=kwargs["dim"], base=kwargs["base"], scaling=scaling)


def _init_function(rope_type: str):
    def init(config=None, device=None, seq_len=None, **kwargs):
        import torch

        import ropekit as rk

        kwargs.pop("rope_type", None)
        spec = _legacy_spec(rope_type, kwargs) if config is None else rk.from_config(config.to_dict())
        inv, factor = rk.inv_freq(spec, seq_len=seq_len, precision="hf")
        return inv.to(device=device, dtype=torch.float32), factor

    return init


def rope_config_validation(config, ignore_keys=None):
    """4.4x: ropekit's check of ``config.rope_scaling`` as it stands (with the caller's
    ``ignore_keys``, as the family's config passes them), then ``from_config`` reads the config."""
    import ropekit as rk
    from ropekit.dialects.hf_scaling import validate
    from ropekit.dialects.releases import installed_release, rules_for

    params = getattr(config, "rope_scaling", None)
    if params:
        _logged(
            validate,
            dict(params),
            rules_for(installed_release()),
            "rope_scaling",
            ignore=ignore_keys or (),
            max_position_embeddings=config.max_position_embeddings,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rk.RopeConfigWarning)  # said once, above
        try:
            rk.from_config(config.to_dict())
        except rk.RopeConfigError as exc:
            _raise_as_transformers(exc)


def _logged(check, *args, **kwargs) -> None:
    """Run ropekit's ``check``: a refusal raises transformers' exception for it, a RopeConfigWarning
    becomes the warning transformers logs (the tests assert on those logs)."""
    import logging

    import ropekit as rk

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check(*args, **kwargs)
        except rk.RopeConfigError as exc:
            _raise_as_transformers(exc)
    for warning in caught:
        if issubclass(warning.category, rk.RopeConfigWarning):
            logging.getLogger("transformers.modeling_rope_utils").warning(str(warning.message))


def _raise_as_transformers(exc) -> None:
    raise (KeyError if "is missing" in str(exc) else ValueError)(str(exc)) from None


def _v5_init_function(config, device=None, seq_len=None, layer_type=None, **kwargs):
    """5.x: ``fn(config, device, seq_len=, layer_type=) -> (inv_freq, attention_factor)``."""
    import torch

    import ropekit as rk

    try:
        spec = rk.from_config(config, layer_type=layer_type)
    except rk.RopeConfigError as exc:
        _raise_as_transformers(exc)
    inv, factor = rk.inv_freq(spec, seq_len=None if seq_len is None else int(seq_len), precision="hf")
    return inv.to(device=device, dtype=torch.float32), factor


def _v5_validate_rope(self) -> None:
    """``PreTrainedConfig.validate_rope`` by ropekit, for every layer type's RoPE dict.

    transformers checks the dict as it stands (its rotary module and config loading fill in the
    pretraining length first; ``from_config`` reproduces those): ropekit's check of a raw dict is
    ``hf_scaling.validate``, with the config's ``ignore_keys_at_rope_validation``.  Then
    ``from_config`` reads it, as the rotary module would.  A RopeConfigWarning of the check becomes
    the warning transformers logs (the test asserts on those logs).
    """
    import ropekit as rk
    from ropekit.dialects import layer_types_of
    from ropekit.dialects.hf_scaling import validate
    from ropekit.dialects.releases import installed_release, rules_for

    if not getattr(self, "rope_parameters", None):
        return
    rules = rules_for(installed_release())
    for layer_type in layer_types_of(self) or [None]:
        params = self.rope_parameters if layer_type is None else self.rope_parameters.get(layer_type)
        if params is None:
            continue  # a layer type without RoPE
        where = "rope_parameters" if layer_type is None else f"rope_parameters[{layer_type!r}]"
        rope_type = params.get("rope_type", params.get("type", "default"))
        _logged(
            validate,
            dict(params),
            rules,
            where,
            rope_type,
            ignore=self.ignore_keys_at_rope_validation or (),
            max_position_embeddings=self.max_position_embeddings,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rk.RopeConfigWarning)  # said once, above
            try:
                rk.from_config(self, layer_type=layer_type)
            except rk.RopeConfigError as exc:
                _raise_as_transformers(exc)


def install_v5_shim() -> list[str]:
    """5.x: ``validate_rope``, ``ROPE_INIT_FUNCTIONS`` (updated in place: modeling files import the
    dict itself) and the default-RoPE functions of the rotary modules the file calls."""
    import transformers.modeling_rope_utils as rope_utils
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    types = list(rope_utils.ROPE_INIT_FUNCTIONS)
    for rope_type in types:
        rope_utils.ROPE_INIT_FUNCTIONS[rope_type] = _v5_init_function
    rope_utils.RotaryEmbeddingConfigMixin.validate_rope = _v5_validate_rope
    for module in (LlamaRotaryEmbedding, Gemma3RotaryEmbedding):
        module.compute_default_rope_parameters = staticmethod(_v5_init_function)
    return ["default", *types]


def install_shim() -> list[str]:
    from ropekit.dialects.releases import installed_release

    if installed_release() >= (5, 0, 0):
        return install_v5_shim()
    import transformers.modeling_rope_utils as rope_utils

    import transformers
    from ropekit.dialects.releases import rules_for

    types = [t for t in rules_for(installed_release()).scaling_types if t not in ("mrope", "su")]
    functions = {t: _init_function(t) for t in types}
    transformers.ROPE_INIT_FUNCTIONS = functions
    rope_utils.ROPE_INIT_FUNCTIONS = functions
    rope_utils.rope_config_validation = rope_config_validation
    return types


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test_file")
    parser.add_argument("--oracle", action="store_true", help="run on transformers itself (no shim)")
    args = parser.parse_args(argv)
    import transformers

    print(f"transformers {transformers.__version__}; {'transformers itself' if args.oracle else 'ropekit shim'}")
    if not args.oracle:
        print("rope types:", ", ".join(install_shim()))
    spec = importlib.util.spec_from_file_location("hf_rope_utils_test", args.test_file)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
        suite = unittest.defaultTestLoader.loadTestsFromModule(module)
        result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    for test, trace in result.failures + result.errors:
        print(f"--- {test.id()}: {trace.strip().splitlines()[-1][:300]}")
    passed = result.testsRun - len(result.failures) - len(result.errors) - len(result.skipped)
    print(f"{passed} passed, {len(result.failures)} failed, {len(result.errors)} errors of {result.testsRun}")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
