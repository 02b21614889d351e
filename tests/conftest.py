import os

from hypothesis import HealthCheck, settings

# bounded, deterministic property tests: CI runs on 2 cores
settings.register_profile(
    "ropekit", max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ropekit"))
