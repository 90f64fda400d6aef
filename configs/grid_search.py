"""The paper's architecture search for the classifier over (c, d, n, N), within a device-memory budget.

Presets (`--config=configs/grid_search.py:PRESET`); each is the classifier preset of the same name plus a grid:
  smoke  seconds; two points on the tiny set, the second deliberately over a tiny memory budget:
         python launch/grid_search.py --config=configs/grid_search.py:smoke --workdir=/tmp/grid_smoke
  demo   four small nets on the synthetic demo set (about 11 minutes on 2 shared CPU cores):
         python launch/grid_search.py --config=configs/grid_search.py:demo --workdir=runs/grid_demo
  paper  on the paper's data and training, within the paper's 12 GB of GPU memory; the ranges of c, d, n, N are
         ours (the paper gives none); meant for a GPU. Its best point is the paper's baseline classifier, from which
         configs/sweep.py:paper builds the segmentation net:
         python launch/grid_search.py --config=configs/grid_search.py:paper --workdir=runs/grid \
           --config.data.root=/data/sem
  recommended  the same ranges and budget, trained with classifier.py:recommended:
         python launch/grid_search.py --config=configs/grid_search.py:recommended --workdir=runs/grid_rec \
           --config.data.root=/data/sem

The grid is the product of the value lists, or `grid.points` when given, e.g.
`--config.grid.points='((8, 2, 1, 1), (16, 3, 1, 1))'`. Restarting the same command resumes the search.
"""
import ml_collections

from configs import base, classifier


def get_base() -> ml_collections.ConfigDict:
  """The classifier's base plus the grid; the presets below are overrides of it."""
  config = classifier.get_base()
  config.grid = ml_collections.ConfigDict()
  config.grid.c = (8, 16)              # channels
  config.grid.d = (2, 3)               # stages (poolings)
  config.grid.n = (1,)                 # convolutions per residual block
  config.grid.N = (1,)                 # residual blocks per stage
  config.grid.points = ()              # explicit (c, d, n, N) points instead of the product; () = the product
  # Device memory one step may use, from XLA's compiled memory analysis of the train and eval steps.
  config.grid.budget_mb = 1024.0
  return config


_PAPER_GRID = {
    "grid.c": (16, 32, 64),
    "grid.d": (3, 4, 5),
    "grid.n": (1, 2),
    "grid.N": (1, 2),
    # The paper's limit was one 12 GB GPU; XLA's figure counts only the step's buffers, not the CUDA context.
    "grid.budget_mb": 12 * 1024.0,
}

# Each preset is the classifier preset of the same name plus its grid.
PRESETS = {
    "smoke": {**classifier.PRESETS["smoke"], "grid.points": ((8, 2, 1, 1), (32, 2, 2, 2)),
              "grid.budget_mb": 20.0},  # the first point needs about 4 MiB, the second about 40
    # 480 steps a point; at 240 most points stayed near chance.
    "demo": {**classifier.PRESETS["demo"], "train.num_epochs": 15},
    "paper": {**classifier.PRESETS["paper"], **_PAPER_GRID},
    "recommended": {**classifier.PRESETS["recommended"], **_PAPER_GRID},
}


def get_config(preset: str = "demo") -> ml_collections.ConfigDict:
  return base.build(get_base(), preset, PRESETS, "configs/grid_search.py")
