"""``ropekit.hf``: the model patcher under the name users know (one module, two names)."""

import sys

from .transformers import patch as _patch

sys.modules[__name__] = _patch
