"""Shared helpers of the config readers: loading a config from any accepted form, and reading
typed values out of it with errors that name the key and the value.

A reader never trusts a config: every value it uses passes through ``number``, ``integer`` or
``flag`` here, so a malformed config fails with one line that names the offending key instead
of a traceback from deep inside torch.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

from ..errors import RopeConfigError, RopeSpecError

__all__ = [
    "Source",
    "load",
    "number",
    "integer",
    "flag",
    "spec_error",
    "LAYOUT_KEY",
    "parse_json",
    "read_json_file",
]

#: config.json key that ``ropekit convert --layout interleaved`` writes: the checkpoint's q/k rows
#: are in that layout, whatever the family's code assumes
LAYOUT_KEY = "ropekit_layout"

_MISSING = object()


class Source:
    """A config as a plain dict plus where it came from (for messages)."""

    def __init__(self, data: dict[str, Any], origin: str, filename: str | None = None):
        self.data = data
        self.origin = origin  # "config.json at /path", "dict", "LlamaConfig"
        self.filename = filename  # "config.json" / "params.json" / "model_config.yaml" / None
        # RoPE keys the config's own class tells transformers' validation to ignore
        self.ignore_keys: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Source({self.origin})"


#: the largest JSON/YAML config ropekit reads (a config.json is kilobytes, an index megabytes)
MAX_CONFIG_BYTES = 64 << 20


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device"


def _regular_file(path: str, error: type[Exception]) -> int:
    """The size of ``path``, refusing anything that is not a regular file *before* opening it
    (a FIFO would block ``open`` forever, a device could stream without end)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is {_kind(info.st_mode)}: it is not a regular file; pass a config file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise error(f"{path} is {info.st_size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
    return info.st_size


def parse_json(data: str | bytes, what: str, error: type[Exception] = RopeConfigError, **loads_options) -> Any:
    """``json.loads`` that fails with one ``error`` naming ``what`` for every malformed input:
    bad syntax, non-UTF-8 bytes, nesting deep enough to exhaust the stack, integers too long to
    convert (Python's 4300-digit limit).  ``loads_options`` go to ``json.loads`` (hooks of a format
    stricter than JSON, such as the safetensors header's)."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return json.loads(data, **loads_options)
    except UnicodeDecodeError:
        raise error(f"{what} is not valid UTF-8 JSON: its bytes are not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a config") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise error(f"{what} holds a value JSON cannot convert: {exc}") from None


def read_json_file(path: str | os.PathLike, error: type[Exception] = RopeConfigError) -> dict[str, Any]:
    """The JSON object in a regular file (the one JSON reader of ropekit; torch-free).

    >>> import os, tempfile
    >>> fifo = os.path.join(tempfile.mkdtemp(), "config.json"); os.mkfifo(fifo)
    >>> read_json_file(fifo)  # refused before open(), which would block
    Traceback (most recent call last):
    ropekit.errors.RopeConfigError: ... is a FIFO: it is not a regular file; pass a config file
    """
    path = os.fspath(path)
    _regular_file(path, error)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    data = parse_json(raw, path, error)
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}; a config is a JSON object")
    return data


def _read_yaml(path: str) -> dict[str, Any]:
    from ..errors import require

    yaml = require("yaml", "litgpt")
    _regular_file(path, RopeConfigError)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)  # safe_load: a config file never constructs Python objects
    except yaml.YAMLError as exc:
        raise RopeConfigError(f"{path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise RopeConfigError(f"{path} is not UTF-8 text") from None
    except RecursionError:
        raise RopeConfigError(f"{path} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise RopeConfigError(f"{path} holds a YAML {type(data).__name__}; a config is a mapping")
    return data


#: files a model directory may hold, in the order they are looked for
CONFIG_FILES = ("config.json", "params.json", "model_config.yaml")


def load(config: Any) -> Source:
    """A PretrainedConfig, a dict, or a path (file or model directory) as a ``Source``."""
    if isinstance(config, dict):
        return Source(dict(config), "dict")
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            for name in CONFIG_FILES:
                candidate = os.path.join(path, name)
                if os.path.isfile(candidate):
                    return load(candidate)
            raise RopeConfigError(f"{path} is a directory without {', '.join(CONFIG_FILES)}")
        if not os.path.exists(path):
            raise RopeConfigError(f"config path {path!r} does not exist")
        name = os.path.basename(path)
        data = _read_yaml(path) if name.endswith((".yaml", ".yml")) else read_json_file(path)
        return Source(data, f"{name} at {path}", name)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):  # transformers' PretrainedConfig (already standardized by transformers)
        data = to_dict()
        if not isinstance(data, dict):
            raise RopeConfigError(f"{type(config).__name__}.to_dict() returned {type(data).__name__}, not a dict")
        return _object_source(config, data)
    raise RopeConfigError(
        f"config of type {type(config).__name__} is not supported; pass a transformers PretrainedConfig, "
        f"a dict, or a path to config.json / params.json / model_config.yaml / a model directory"
    )


def _object_source(config: Any, data: dict[str, Any]) -> Source:
    source = Source(data, type(config).__name__)
    ignore = getattr(config, "ignore_keys_at_rope_validation", None)  # a class attribute: not in to_dict()
    if isinstance(ignore, (set, frozenset, list, tuple)):
        source.ignore_keys = frozenset(k for k in ignore if isinstance(k, str))
    return source


# ---------------------------------------------------------------------------------------------
# typed reads: each names the key (with its path inside the config) and the bad value
# ---------------------------------------------------------------------------------------------


#: the largest integer a config may hold for a size or length (torch indexes with int64)
MAX_INT = 2**62


def _short(value: Any) -> str:
    """repr for messages, cut short (a hostile config may hold a 4000-digit integer)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} chars)"


def _get(d: dict, key: str, default: Any) -> Any:
    value = d.get(key, _MISSING)
    return default if value is _MISSING or value is None else value


def number(d: dict, key: str, default: Any = _MISSING, *, where: str = "") -> float:
    """``d[key]`` as a finite float (``default`` when absent or null; required when no default)."""
    value = _get(d, key, default)
    if value is _MISSING:
        raise RopeConfigError(f"{where}{key} is missing from the config")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RopeConfigError(f"{where}{key}={_short(value)} must be a number")
    try:
        value = float(value)  # a JSON integer may be too large for a float
    except OverflowError:
        raise RopeConfigError(f"{where}{key}={_short(value)} is too large") from None
    if not math.isfinite(value):
        raise RopeConfigError(f"{where}{key}={value!r} must be finite")
    return value


def integer(d: dict, key: str, default: Any = _MISSING, *, where: str = "", low: int = 1) -> int:
    """``d[key]`` as an int >= ``low`` (an integral float such as 4096.0 is accepted)."""
    value = _get(d, key, default)
    if value is _MISSING:
        raise RopeConfigError(f"{where}{key} is missing from the config")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RopeConfigError(f"{where}{key}={_short(value)} must be an integer")
    if value < low:
        raise RopeConfigError(f"{where}{key}={_short(value)} must be >= {low}")
    if value > MAX_INT:  # sizes and lengths beyond int64 only come from broken configs
        raise RopeConfigError(f"{where}{key}={_short(value)} is too large (at most {MAX_INT})")
    return value


def flag(d: dict, key: str, default: bool, *, where: str = "") -> bool:
    value = _get(d, key, default)
    if not isinstance(value, bool):
        raise RopeConfigError(f"{where}{key}={value!r} must be true or false")
    return value


def numbers(d: dict, key: str, *, where: str = "") -> list[float]:
    value = d.get(key)
    if value is None:
        raise RopeConfigError(f"{where}{key} is missing from the config")
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise RopeConfigError(f"{where}{key}={value!r} must be a list of numbers")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RopeConfigError(f"{where}{key}[{i}]={v!r} must be a finite number")
        out.append(float(v))
    return out


def spec_error(source: Source, exc: RopeSpecError) -> RopeConfigError:
    """A spec validation error re-raised as a config error that says which config it came from."""
    return RopeConfigError(f"{source.origin}: {exc}")
