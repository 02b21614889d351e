"""Every example in a public docstring runs (einops-style): documentation that cannot rot."""

import doctest
import importlib
import pkgutil

import pytest

import ropekit

MODULES = ["ropekit"] + [
    m.name for m in pkgutil.walk_packages(ropekit.__path__, "ropekit.") if not m.name.endswith("__main__")
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
