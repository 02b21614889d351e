"""The package's face (``ropekit/__init__.py``): ``__all__``, ``dir(ropekit)`` and ``import *``."""

from __future__ import annotations

import importlib
import types

import ropekit

# names DESIGN.md fixes for users; each must be public (in __all__) or a subpackage attribute
FIXED_NAMES = {
    "RopeSpec",
    "from_config",
    "inv_freq",
    "cos_sin",
    "apply_rope",
    "apply_rope_qk",
    "apply_rope_qkv",
    "permute_qk",
    "fingerprint",
    "compare",
    "RotaryEmbedding",
    "convert",
    "RopeError",
}
SUBPACKAGES = {"hf", "zoo", "kernels", "dialects", "plot", "transformers", "conversion", "doctor"}


def test_all_is_sorted_unique_and_every_name_resolves_to_a_non_module():
    assert ropekit.__all__ == sorted(set(ropekit.__all__))
    assert FIXED_NAMES <= set(ropekit.__all__)
    for name in ropekit.__all__:
        value = getattr(ropekit, name)
        assert not isinstance(value, types.ModuleType), name
    assert callable(ropekit.convert)  # the function, not the conversion package


def test_dir_shows_the_public_names_the_subpackages_and_the_version_only():
    # importing internals first must not leak their names (``spec``, ``errors``, ...) into dir()
    for internal in ("ropekit.spec", "ropekit.errors", "ropekit.tables", "ropekit.apply", "ropekit.cli"):
        importlib.import_module(internal)
    shown = dir(ropekit)
    assert shown == sorted(set(ropekit.__all__) | SUBPACKAGES | {"__version__"})
    assert "annotations" not in shown and "importlib" not in shown
    for name in SUBPACKAGES:
        module = getattr(ropekit, name)
        assert isinstance(module, types.ModuleType) and module.__name__.startswith("ropekit."), name


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from ropekit import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == ropekit.__all__
