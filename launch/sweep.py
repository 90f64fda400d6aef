"""The main job: a hypothesis sweep, ending in `WORKDIR/report.html`.

  python launch/sweep.py --config=configs/sweep.py:demo --workdir=runs/demo [--config.data.root=DIR]

Restarting the same command resumes from the last checkpoint.
"""
from absl import flags

from copper_jax import cli

_CONFIG = cli.define_config("configs/sweep.py:demo", "Sweep config file and preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, results and the report.", required=True)
_QUIET = flags.DEFINE_bool("quiet", False, "Print only errors and the final line.")


def main(argv):
  del argv
  from copper_jax import determinism
  # Before anything runs on a device: XLA reads its flags once, when JAX starts its backends.
  determinism.configure(_CONFIG.value.deterministic)
  from copper_jax.sweep import run
  run.run_sweep(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value)
  print(f"report: {_WORKDIR.value}/report.html")


if __name__ == "__main__":
  cli.run(main)
