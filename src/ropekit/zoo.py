"""``ropekit.zoo``: the zoo of conventions under its first name (one module, two names)."""

import sys

from .doctor import zoo as _zoo

sys.modules[__name__] = _zoo
