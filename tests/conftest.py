import os

import torch

# Triton kernels run on the CPU in CI: the interpreter is chosen when @triton.jit runs, so it must
# be switched on before anything imports triton (a GPU machine runs the real kernels instead)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings

# bounded, deterministic property tests: CI runs on 2 cores
settings.register_profile(
    "ropekit",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ropekit"))
