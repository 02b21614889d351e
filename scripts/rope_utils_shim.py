"""Run transformers' own tests/utils/test_modeling_rope_utils.py against ropekit through a shim.

The test file is transformers' (Apache-2.0), not ropekit's: it is never part of this project.
Pass its path; run it under the transformers release the file was written for, e.g.

    PYTHONPATH=/work/deps/transformers-4.45.2 .venv/bin/python scripts/rope_utils_shim.py \\
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
import sys
import unittest
import warnings


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
    import ropekit as rk

    try:
        rk.from_config(config.to_dict())
    except rk.RopeConfigError as exc:
        raise (KeyError if "is missing" in str(exc) else ValueError)(str(exc)) from None


def install_shim() -> list[str]:
    import transformers.modeling_rope_utils as rope_utils

    import transformers
    from ropekit.dialects.releases import installed_release, rules_for

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
