"""Trains the baseline stress-time classifier, then writes `WORKDIR/results.json` and its figures.

  python launch/train.py --config=configs/classifier.py:demo --workdir=runs/clf_demo [--config.data.root=DIR]

Restarting the same command resumes from the last checkpoint.
"""
from absl import flags

from copper_jax import cli

_CONFIG = cli.define_config("configs/classifier.py:demo", "Classifier config and preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and results.", required=True)
_QUIET = flags.DEFINE_bool("quiet", False, "Print only errors and the final line.")


def main(argv):
  del argv
  from copper_jax import determinism
  # Before anything runs on a device: XLA reads its flags once, when JAX starts its backends.
  determinism.configure(_CONFIG.value.deterministic)
  from copper_jax.classifier import run
  results = run.train_and_evaluate(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value)
  if _QUIET.value:
    print(run.headline(results, results["figures"]["split"]))
  print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  cli.run(main, reuse_freed_memory=True)  # one model per program: see copper_jax/host_memory.py
