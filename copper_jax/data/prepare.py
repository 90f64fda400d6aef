"""The `data` section every job's config shares, and turning it into a dataset and its saved split."""
import os

import ml_collections

from copper_jax.data import folder, splits, synthetic
from copper_jax.errors import ConfigError
from copper_jax.logging_utils import log


def data_config(split: dict) -> ml_collections.ConfigDict:
  """The default `config.data`: the user's folder of SEM images, or a generated synthetic set.

  `split` is the per-label split, counts (e.g. {"train": 40, "val": 5, "test": 5}) or fractions.
  """
  data = ml_collections.ConfigDict()
  data.root = ""                # a folder of SEM images by stress time; "" generates the synthetic set
  data.crop_bottom = 0          # pixels of SEM info bar to remove
  data.skip_unreadable = False  # skip (and list) unreadable images instead of stopping
  # "dataset": one mean and std for all images. Per-image standardisation ("image") would leak the global
  # fraction: an image's std falls as its smoothed area grows, so dividing by it rescales every pixel's noise by
  # a function of f(t), a global cue a local model could read (SCIENCE.md, "Why the ranking can work").
  data.standardise = "dataset"
  data.split = ml_collections.ConfigDict(split)
  data.synthetic = ml_collections.ConfigDict()
  data.synthetic.preset = "demo"
  data.synthetic.f_true = "sqrt"
  data.synthetic.confounded = False
  data.synthetic.seed = 0
  data.synthetic.num_labels = 0         # 0: the preset's value
  data.synthetic.images_per_label = 0   # 0: the preset's value
  data.synthetic.size = 0               # image height and width in pixels; 0: the preset's value
  return data


def prepare_data(config, work_dir: str):
  """The dataset (the user's folder, or the synthetic set generated into the workdir) and its saved split."""
  root = config.data.root
  if not root:
    root = os.path.join(work_dir, "data")
    if not os.path.exists(os.path.join(root, "manifest.json")):
      syn = config.data.synthetic
      log(f"no data.root given: generating the synthetic '{syn.preset}' set (f_true={syn.f_true}) in {root}")
      overrides = {k: syn[k] for k in ("num_labels", "images_per_label") if syn[k] > 0}
      if syn.size > 0:
        overrides.update(height=syn.size, width=syn.size)
      synthetic.generate(root, preset=syn.preset, f_true=syn.f_true, seed=syn.seed, confounded=syn.confounded,
                         **overrides)
  dataset = folder.load_folder(root, crop_bottom=config.data.crop_bottom,
                               skip_unreadable=config.data.skip_unreadable, standardise=config.data.standardise)
  if config.train.patch_size > min(dataset.image_shape):
    raise ConfigError(f"config.train.patch_size={config.train.patch_size} is larger than the images "
                      f"{dataset.image_shape}; choose at most {min(dataset.image_shape)}")
  split = splits.load_or_make_splits(work_dir, dataset, config.data.split.to_dict(), config.seed)
  return dataset, split
