"""The shape of the code under src/ as a whole, read with ast: small modules (<= 400 lines), short
functions (<= 80 lines), and no private name (leading underscore) reached across modules, so that
what one module shares with another is a named internal API and not its private helper.

Each check is also run on a small made-up tree that breaks it, so a check that cannot fail fails.
"""

from __future__ import annotations

import ast
import os
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

#: Known exceptions, each being fixed elsewhere; remove an entry once its fix is merged.  A listed
#: item that is back within the limit fails the test too, so the list cannot go stale.
ALLOWED_LONG_MODULES: set[str] = set()
ALLOWED_LONG_FUNCTIONS: set[str] = set()
ALLOWED_PRIVATE_USES: set[str] = set()


def _modules(root: Path) -> dict[str, ast.Module]:
    return {
        path.relative_to(root).as_posix(): ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for path in sorted(root.rglob("*.py"))
    }


def long_modules(root: Path) -> dict[str, int]:
    """{module: line count} of every module over MAX_MODULE_LINES."""
    counts = {
        path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in root.rglob("*.py")
    }
    return {name: n for name, n in counts.items() if n > MAX_MODULE_LINES}


def long_functions(root: Path) -> dict[str, int]:
    """{"module:function": line count} of every function (methods and nested ones too) over
    MAX_FUNCTION_LINES, decorators and docstring included."""
    found = {}
    for name, tree in _modules(root).items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"{name}:{node.name}"] = length
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(root: Path) -> set[str]:
    """Every place a module reaches another module's private name: ``from x import _y`` from a
    module of the package (relative, or absolute under a top-level package in ``root``), and
    ``m._y`` where ``_y`` is a top-level private name of a module this one imports and not of this
    one (``m`` need not be the imported name: a module handed back by a function counts too)."""
    trees = _modules(root)
    packages = {name.split("/")[0] for name in trees}
    private_names: dict[str, set[str]] = {}  # module stem -> its top-level private names
    for name, tree in trees.items():
        private_names.setdefault(Path(name).stem, set()).update(_top_level_names(tree))
    found = set()
    for name, tree in trees.items():
        own = _top_level_names(tree)
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in packages):
                imported.update([*(node.module or "").split(".")[-1:], *(alias.name for alias in node.names)])
                found.update(f"{name} -> {node.module or '.'}.{a.name}" for a in node.names if _private(a.name))
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[-1] for a in node.names if a.name.split(".")[0] in packages)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                found.update(f"{name} -> {m}.{node.attr}" for m in imported if node.attr in private_names.get(m, ()))
    return found


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if _private(n)}


def _check(found: dict | set, allowed: set[str], what: str) -> None:
    unexpected = {k: (found[k] if isinstance(found, dict) else "") for k in found if k not in allowed}
    assert not unexpected, f"{what}: {unexpected}"
    stale = sorted(allowed - set(found))
    assert not stale, f"allowed but no longer {what} (remove from the allowlist): {stale}"


def test_no_module_is_over_400_lines():
    _check(long_modules(SRC), ALLOWED_LONG_MODULES, f"modules over {MAX_MODULE_LINES} lines")


def test_no_function_is_over_80_lines():
    _check(long_functions(SRC), ALLOWED_LONG_FUNCTIONS, f"functions over {MAX_FUNCTION_LINES} lines")


def test_no_private_name_is_used_across_modules():
    _check(private_uses(SRC), ALLOWED_PRIVATE_USES, "private names used across modules")


# ---------------------------------------------------------------------------------------------
# the checks themselves catch what they are for
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def bad_tree(tmp_path):
    def write(relative: str, text: str) -> None:
        path = tmp_path / relative
        os.makedirs(path.parent, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")

    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))  # def line + 80 = 81 lines
    write("pkg/__init__.py", "")
    write("pkg/long.py", "def long():\n" + body + "\n\ndef short():\n    return 1\n" + "#\n" * MAX_MODULE_LINES)
    write("pkg/helpers.py", "_SECRET = 1\n\n\ndef _helper():\n    return _SECRET\n")
    write("pkg/relative.py", "from .helpers import _helper\n")
    write("pkg/absolute.py", "from pkg.helpers import _SECRET\n")
    write("pkg/attribute.py", "from . import helpers\n\n\ndef f():\n    return helpers._helper()\n")
    write("pkg/fine.py", "import torch\n\n_OWN = 1\n\n\ndef f(m):\n    return m._buffers, _OWN, torch._C\n")
    return tmp_path


def test_the_checks_catch_what_they_are_for(bad_tree):
    assert long_modules(bad_tree) == {"pkg/long.py": MAX_FUNCTION_LINES + 5 + MAX_MODULE_LINES}
    assert long_functions(bad_tree) == {"pkg/long.py:long": MAX_FUNCTION_LINES + 1}
    assert private_uses(bad_tree) == {
        "pkg/relative.py -> helpers._helper",
        "pkg/absolute.py -> pkg.helpers._SECRET",
        "pkg/attribute.py -> helpers._helper",
    }


def test_an_allowlist_entry_that_is_fixed_fails():
    with pytest.raises(AssertionError, match="no longer"):
        _check({}, {"ropekit/gone.py"}, "modules over 400 lines")
