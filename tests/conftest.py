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


def train_smoke_classifier(tmp_path_factory, num_epochs: int) -> str:
  """A briefly trained classifier workdir of its own (splits, images, results.json): what the blind test needs."""
  from configs import classifier as classifier_configs
  from copper_jax.classifier import run as classifier
  config = classifier_configs.get_config("smoke")
  config.train.num_epochs = num_epochs
  config.train.eval_every_epochs = 1
  config.eval.num_cam = 0
  work_dir = str(tmp_path_factory.mktemp("clf"))
  classifier.train_and_evaluate(config, work_dir, quiet=True)
  return work_dir
