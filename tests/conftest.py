"""Test set-up: CPU only, so the suite is the same on a laptop, in CI and next to a GPU."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
