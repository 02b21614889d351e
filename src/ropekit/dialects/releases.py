"""Which transformers release reads a config, and how that release reads RoPE keys.

The same config.json means different rotations under different transformers releases; a spec
is the rotation of one release.  ``target_release`` picks it: the ``transformers_version`` the
caller names, else the installed transformers, else the newest rules.

Rules that differ by release, each read in that release's own code at the verified releases
4.37.2, 4.38.1, 4.45.2, 4.57.6 and 5.24.0.  Between two verified releases that differ, the
boundary is the release named below; boundaries marked (unverified) were not checked against
every release in between:

* before 5.0 only ``rope_theta`` / ``rope_scaling`` (and ``partial_rotary_factor``) at the top
  level are read: a 5.x ``rope_parameters`` dict is ignored (base 10000, no scaling for Llama).
* before 4.43 (4.37, 4.38; boundary: the release that brought ``modeling_rope_utils``,
  unverified): only ``linear`` and ``dynamic`` scaling exist, ``rope_scaling`` must hold exactly
  ``type`` and ``factor`` (a float > 1), and linear scaling divides the positions (``t / factor``)
  instead of the frequencies -- the same rotation, different float32 rounding.
* yarn (boundaries read in each release's ``modeling_rope_utils``: 4.50.3 and 4.51.0, 4.55.4 and
  4.56.0; run at 4.45.2, 4.56.0, 4.57.0, 4.57.6):
  - before 4.51 the correction range uses ``max_position_embeddings`` (any
    ``original_max_position_embeddings`` is ignored);
  - from 4.51 to 4.55 an ``original_max_position_embeddings`` in the scaling dict sets the range
    AND replaces the dict's ``factor`` by ``max_position_embeddings / original``;
  - from 4.56 the dict's ``factor`` stays; the range uses the dict's original, else
    ``max_position_embeddings``;
  - before 4.51 ``mscale`` / ``mscale_all_dim`` are not read (the attention factor is
    ``0.1 ln(factor) + 1``), and validation calls them and ``original_max_position_embeddings``
    unrecognized keys (read in 4.50.3 and 4.51.0);
  - before 4.55 the range is always truncated (a ``truncate`` key is ignored, and unrecognized);
  - from 4.56 validation warns when ``factor`` differs from the implicit factor
    ``max_position_embeddings / original_max_position_embeddings`` (5.x: unless that ratio is 1,
    which its standardization produces when the config names no original length).
* validation ignores RoPE keys the family's config names (Qwen2-VL's ``mrope_section``; 5.x also
  ``ignore_keys_at_rope_validation`` of the config), and warns about other unknown ones.
* before 4.51 a llama-style longrope module picks its factors once, at init (long when the
  context is extended); from 4.51 it picks per sequence length, as Phi-3's own module does.
* before 5.0: longrope reads only the top-level ``original_max_position_embeddings`` (the
  scaling dict's is ignored); without it the original length is ``max_position_embeddings``.
* dynamic NTK before 4.43 (4.38.1 and 4.42.4 read; 4.37 has its own growing cache): a call
  longer than ``max_position_embeddings`` recomputes the frequencies for its own length and keeps
  them, shorter calls reuse the last ones (from 4.43: grow past the longest seen, reset below the
  original length).
* dynamic NTK is stateful in transformers (the base grows with the longest sequence seen and
  resets below the original length); a spec describes one sequence length at a time (``seq_len``).

>>> target_release("4.38.1")
(4, 38, 1)
>>> rules_for((4, 38, 1)).linear_divides_positions, rules_for((5, 24, 0)).reads_rope_parameters
(True, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import RopeConfigError

__all__ = ["Rules", "target_release", "installed_release", "rules_for", "release_text", "NEWEST"]

#: the rules used when no transformers is installed and no release is named
NEWEST = (5, 24, 0)


def _parse(version: str, name: str = "transformers_version") -> tuple[int, int, int]:
    match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", version) if isinstance(version, str) else None
    if match is None:
        raise RopeConfigError(f"{name}={version!r} is not a transformers release such as '4.38.1' or '5.2.0'")
    major, minor, patch = (int(g) if g is not None else 0 for g in match.groups())
    return major, minor, patch


def installed_release() -> tuple[int, int, int] | None:
    """The installed transformers release, or None (its version is read without importing it)."""
    from importlib import metadata

    try:
        return _parse(metadata.version("transformers"))
    except metadata.PackageNotFoundError:
        return None
    except RopeConfigError:  # pragma: no cover - a local build with an odd version string
        return None


def target_release(transformers_version: str | None = None) -> tuple[int, int, int]:
    """The release whose reading a spec reproduces (see the module docstring)."""
    if transformers_version is not None:
        release = _parse(transformers_version)
        if release < (4, 37, 0):
            raise RopeConfigError(
                f"transformers_version={transformers_version!r}: ropekit reproduces transformers 4.37 and later"
            )
        return release
    return installed_release() or NEWEST


def release_text(release: tuple[int, int, int]) -> str:
    return ".".join(map(str, release))


@dataclass(frozen=True)
class Rules:
    """How one release reads RoPE keys (see the module docstring)."""

    reads_rope_parameters: bool
    scaling_types: tuple[str, ...]
    strict_v437_scaling: bool
    linear_divides_positions: bool
    yarn_range_from_max_position: bool
    longrope_original_top_level_only: bool
    yarn_factor_from_lengths: bool = False
    yarn_reads_truncate: bool = True
    longrope_fixed_at_init: bool = False
    dynamic_per_long_call: bool = False
    yarn_warns_implicit_factor: bool = False
    yarn_reads_mscale: bool = True


def rules_for(release: tuple[int, int, int]) -> Rules:
    """The reading rules of ``release`` (a ``target_release`` tuple)."""
    old = release < (4, 43, 0)
    types = ("default", "linear", "dynamic") if old else None
    if types is None:
        types = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "mrope", "su")
        if release >= (5, 0, 0):
            types += ("proportional",)
    return Rules(
        reads_rope_parameters=release >= (5, 0, 0),
        scaling_types=types,
        strict_v437_scaling=old,
        linear_divides_positions=old,
        yarn_range_from_max_position=release < (4, 51, 0),
        longrope_original_top_level_only=release < (5, 0, 0),
        yarn_factor_from_lengths=(4, 51, 0) <= release < (4, 56, 0),
        yarn_reads_truncate=release >= (4, 55, 0),
        longrope_fixed_at_init=release < (4, 51, 0),
        dynamic_per_long_call=release < (4, 43, 0),
        yarn_warns_implicit_factor=release >= (4, 56, 0),
        yarn_reads_mscale=release >= (4, 51, 0),
    )
