"""Test set-up: CPU only, so the suite is the same on a laptop, in CI and next to a GPU."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Launchers the tests start write no compilation cache into the user's home; tests that want one pass a folder.
os.environ.setdefault("COPPER_JAX_COMPILE_CACHE", "off")

import pytest


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
  """One finished smoke sweep shared by the tests that only read it: (workdir, summary)."""
  from configs import sweep as sweep_configs
  from copper_jax.sweep import run as sweep
  work_dir = str(tmp_path_factory.mktemp("smoke_sweep"))
  return work_dir, sweep.run_sweep(sweep_configs.get_config("smoke"), work_dir, quiet=True)
