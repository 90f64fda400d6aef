"""The classifier's architecture search over (c, d, n, N), within a device-memory budget.

  python launch/grid_search.py --config=configs/grid_search.py:demo --workdir=runs/grid_demo [--config.data.root=DIR]

Writes WORKDIR/grid.md (ranked table, best named), grid.csv and grid.json; each point trains in
WORKDIR/points/<c>_<d>_<n>_<N>/. Restarting the same command resumes the search.
"""
from absl import flags

from copper_jax import cli

_CONFIG = cli.define_config("configs/grid_search.py:demo", "Grid-search config and preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the points, the table and the shared data.",
                               required=True)
_QUIET = flags.DEFINE_bool("quiet", False, "Print only errors and the final line.")


def main(argv):
  del argv
  from copper_jax.classifier import grid_search
  grid = grid_search.run_grid(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value)
  if _QUIET.value:
    print(grid_search.headline(grid))
  print(f"table: {_WORKDIR.value}/grid.md")


if __name__ == "__main__":
  cli.run(main, reuse_freed_memory=True)  # one model per program: see copper_jax/host_memory.py
