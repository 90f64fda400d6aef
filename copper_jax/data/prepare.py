"""Turning a config's `data` section into a dataset and its saved split."""
import dataclasses
import hashlib
import json
import math
import os

import numpy as np

from copper_jax import processes
from copper_jax.store import workdir
from copper_jax.data import folder, sampler, sem_metadata, splits, synthetic
from copper_jax.errors import ConfigError, DataError
from copper_jax.store.logs import log

SUMMARY_FILE = "data_summary.json"


def check_patch_fits(config) -> None:
  """ConfigError naming train.patch_size when it is larger than the images, read from one header (the user's
  folder) or the synthetic preset, or naming an unknown synthetic texture; nothing is loaded or written, so it can
  run before the workdir is made."""
  if config.data.root:
    height, width = folder.peek_image_shape(config.data.root, config.data.crop_bottom, config.data.page,
                                            config.data.pixel_size_nm)
  else:
    synthetic.check_texture(config.data.synthetic.texture)
    height, width = synthetic.image_shape(config.data.synthetic.preset, **_synthetic_overrides(config.data.synthetic))
    # The synthetic set records no info bar, so "auto" crops nothing.
    height -= 0 if config.data.crop_bottom == folder.AUTO_CROP else config.data.crop_bottom
  if config.train.patch_size > min(height, width):
    raise ConfigError(f"config.train.patch_size={config.train.patch_size} is larger than the {height}x{width} "
                      f"(H x W) images; choose at most {min(height, width)}")


def _synthetic_overrides(syn) -> dict:
  """The synthetic set's size settings that differ from its preset."""
  overrides = {k: syn[k] for k in ("num_labels", "images_per_label") if syn[k] > 0}
  overrides.update({k: syn[k] for k in ("fraction_jitter", "drift_brightness", "drift_blur")})
  if syn.size > 0:
    overrides.update(height=syn.size, width=syn.size)
  return overrides


def load_dataset(config, work_dir: str):
  """The dataset of the config: the user's folder, or the synthetic set generated into the workdir."""
  root = config.data.root
  if not root:
    root = os.path.join(work_dir, "data")
    # With several processes the first generates the set and the others wait for it (copper_jax.processes).
    if processes.is_primary() and not os.path.exists(os.path.join(root, "manifest.json")):
      syn = config.data.synthetic
      log(f"no data.root given: generating the synthetic '{syn.preset}' set (f_true={syn.f_true}, texture="
          f"{syn.texture}) in {root}")
      synthetic.generate(root, preset=syn.preset, f_true=syn.f_true, seed=syn.seed, confounded=syn.confounded,
                         texture=syn.texture, **_synthetic_overrides(syn))
    processes.barrier("synthetic data written")
  dataset = folder.load_folder(root, crop_bottom=config.data.crop_bottom,
                               skip_unreadable=config.data.skip_unreadable, standardise=config.data.standardise,
                               max_pixels=config.data.max_pixels, mixed_pixel_sizes=config.data.mixed_pixel_sizes,
                               page=config.data.page, pixel_size_nm=config.data.pixel_size_nm)
  if config.train.patch_size > min(dataset.image_shape):
    raise ConfigError(f"config.train.patch_size={config.train.patch_size} is larger than the images "
                      f"{dataset.image_shape}; choose at most {min(dataset.image_shape)}")
  return dataset


def prepare_data(config, work_dir: str):
  """The dataset and its saved split, for evaluating a trained workdir: DataError when the data are not the ones
  it was trained on (see `data_identity`)."""
  dataset = load_dataset(config, work_dir)
  check_same_data(config, work_dir, dataset)
  split = splits.load_or_make_splits(work_dir, dataset, config.data.split.to_dict(), config.seed)
  folder.standardise_on(dataset, split["train"], config.data.standardise)
  return dataset, split


def data_identity(config, work_dir: str, dataset) -> dict:
  """What makes two datasets the same to a trained model: where they are, which files with which sizes, their
  pixel type and image size, how they are cropped and standardised, and their pixel statistics (the mean and
  std pick up other images saved under the same names and sizes)."""
  root = os.path.realpath(dataset.root)
  inside = os.path.realpath(work_dir)
  shown_root = ("<workdir>/" + os.path.relpath(root, inside) if root.startswith(inside + os.sep) else root)
  listing = hashlib.sha256()
  for rel in dataset.paths:
    listing.update(f"{rel}\t{os.path.getsize(os.path.join(dataset.root, rel))}\n".encode("utf-8", "surrogateescape"))
  return {"root": shown_root, "num_files": len(dataset.paths), "files_sha256": listing.hexdigest(),
          "dtype": np.dtype(dataset.images[0].dtype).name, "image_shape": list(dataset.image_shape),
          "standardise": config.data.standardise, "crop_bottom": config.data.crop_bottom,
          "page": int(config.data.page), "pixel_size_nm": float(config.data.pixel_size_nm),
          "pixel_mean": float(np.mean(dataset.intensity_mean)), "pixel_std": float(np.mean(dataset.intensity_std))}


_IDENTITY_WORDS = {"root": "root", "num_files": "number of files", "files_sha256": "file names or sizes",
                   "dtype": "pixel type", "image_shape": "image size", "standardise": "data.standardise",
                   "crop_bottom": "data.crop_bottom", "page": "data.page", "pixel_size_nm": "data.pixel_size_nm",
                   "pixel_mean": "pixel mean", "pixel_std": "pixel std"}


def check_same_data(config, work_dir: str, dataset) -> None:
  """DataError when W/data_summary.json records other training data than `dataset` (nothing to compare in a
  workdir trained before the record existed)."""
  saved = workdir.read_json(os.path.join(work_dir, SUMMARY_FILE), {}, fix="delete it to reload the data")
  saved = saved.get("identity") if isinstance(saved, dict) else None
  if not isinstance(saved, dict):
    return
  now = data_identity(config, work_dir, dataset)
  differ = [k for k in now if k in saved and json.dumps(saved[k]) != json.dumps(now[k])]
  if differ:
    detail = ", ".join(f"{_IDENTITY_WORDS[k]} {_short(saved[k])} -> {_short(now[k])}" for k in differ)
    raise DataError(f"{work_dir} was trained on other data than {dataset.root} ({detail}): point data.root at its "
                    f"training data with the same data settings, or use a fresh --workdir")


def _short(value) -> str:
  text = json.dumps(value)
  return text if len(text) <= 24 else text[:21] + "..."


def saved_steps(work_dir: str) -> list:
  """Finished checkpoint steps in W/checkpoints, read from the folder names alone (nothing is opened)."""
  folder_ = os.path.join(work_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder_) if n.isdigit()) if os.path.isdir(folder_) else []


def check_duration(config, work_dir: str, dataset, split) -> None:
  """A run resuming from W's checkpoints must last at least as long as they have trained."""
  steps = saved_steps(work_dir)
  if not steps:
    return
  total = sampler.run_steps(config.train, dataset.image_shape, len(split["train"]))
  if steps[-1] > total:
    key = "num_steps" if config.train.num_steps else "num_epochs"
    raise ConfigError(f"config.train.{key}={config.train[key]} gives {total} steps but {work_dir} holds a "
                      f"checkpoint of step {steps[-1]}: ask for at least {steps[-1]} steps, or evaluate it with "
                      f"launch/evaluate.py")


@dataclasses.dataclass(frozen=True)
class DataSummary:
  """What a trained model keeps of its training data: enough to restore it and to read new images as its training
  images were read (stress times, image size, pixel type, dataset standardisation), without the images.

  Training writes it to W/data_summary.json, so prediction neither needs the images nor spends the time to load
  them, and standardises new images with the statistics the model was trained with even if the folder changed.
  """
  stress_times: np.ndarray  # (T,) float64, ascending
  label_names: list
  image_shape: tuple        # (H, W) after crop_bottom
  dtype: np.dtype           # the images' pixel type
  mean: float               # the dataset standardisation, in pixel units (unused when config.data.standardise is
  std: float                # "image")
  split_sizes: dict         # images per split
  # What new images are checked against (None in summaries written before these were recorded):
  pixel_size_nm: float | None = None   # the scale trained at: data.pixel_size_nm, else the files' common size
  intensity_range: dict | None = None  # {"mean": [lo, hi], "std": [lo, hi]}: the training images' own mean and std
  pixel_size_range_nm: list | None = None  # [lo, hi] of the training files' pixel sizes as they are
  resampled_to_nm: float | None = None     # data.pixel_size_nm when the images were resampled to it

  def pixel_size_flag(self, pixel_size_nm: float | None) -> str | None:
    """Why a new image's pixel size (from its file) is unlike the training images', or None: resampled sets take
    any known size; otherwise the size must lie in the training files' range (one size, or several with
    data.mixed_pixel_sizes=allow), within `sem_metadata.SAME_PIXEL_SIZE_RTOL`."""
    if self.resampled_to_nm:
      return None if pixel_size_nm else f"no pixel size in the file; resampled to {self.resampled_to_nm:.4g} nm"
    span = self.pixel_size_range_nm or ([self.pixel_size_nm] * 2 if self.pixel_size_nm else None)
    if not span:
      return None
    shown = f"{span[0]:.4g} nm" if sem_metadata.same_pixel_size(*span) else f"{span[0]:.4g}..{span[1]:.4g} nm"
    if not pixel_size_nm:
      return f"no pixel size in the file; trained on {shown}"
    inside = span[0] * (1 - sem_metadata.SAME_PIXEL_SIZE_RTOL) <= pixel_size_nm <= span[1] * (
        1 + sem_metadata.SAME_PIXEL_SIZE_RTOL)
    return None if inside else f"pixel size {pixel_size_nm:.4g} nm, trained on {shown}"

  @property
  def num_classes(self) -> int:
    return len(self.stress_times)

  @property
  def tau(self) -> np.ndarray:
    return folder.normalised_times(self.stress_times)

  @classmethod
  def of(cls, dataset, split: dict) -> "DataSummary":
    return cls(stress_times=np.asarray(dataset.stress_times, np.float64), label_names=list(dataset.label_names),
               image_shape=tuple(dataset.image_shape), dtype=np.dtype(dataset.images[0].dtype),
               mean=float(dataset.mean[0]), std=float(dataset.std[0]),
               split_sizes={name: len(paths) for name, paths in split.items()},
               pixel_size_nm=dataset.pixel_size_nm, pixel_size_range_nm=dataset.pixel_size_range_nm,
               resampled_to_nm=dataset.resampled_to_nm,
               intensity_range={"mean": [float(dataset.intensity_mean.min()), float(dataset.intensity_mean.max())],
                                "std": [float(dataset.intensity_std.min()), float(dataset.intensity_std.max())]})


def save_summary(config, work_dir: str, dataset, split: dict) -> None:
  """Writes W/data_summary.json for the data a training run is about to use (replaced atomically)."""
  summary = DataSummary.of(dataset, split)
  workdir.atomic_write_json(os.path.join(work_dir, SUMMARY_FILE), {
      "stress_times": summary.stress_times.tolist(), "label_names": summary.label_names,
      "image_shape": list(summary.image_shape), "dtype": summary.dtype.name, "mean": summary.mean,
      "std": summary.std, "split_sizes": summary.split_sizes, "pixel_size_nm": summary.pixel_size_nm,
      "pixel_size_range_nm": summary.pixel_size_range_nm, "resampled_to_nm": summary.resampled_to_nm,
      "crop_bottom": config.data.crop_bottom, "page": int(config.data.page),
      "intensity_range": summary.intensity_range, "identity": data_identity(config, work_dir, dataset)})


def prepare_training_data(config, work_dir: str):
  """The dataset and split of a training run, checked before the run writes anything of its own: on resume the
  data must be the checkpoints' and the duration no shorter, and the split must fit the labels. Then splits.json and
  data_summary.json (what prediction needs of the data) are written."""
  dataset = load_dataset(config, work_dir)
  if saved_steps(work_dir):
    check_same_data(config, work_dir, dataset)
  sizes = config.data.split.to_dict()
  saved = os.path.exists(os.path.join(work_dir, splits.SPLITS_FILE))
  if saved:
    split = splits.load_or_make_splits(work_dir, dataset, sizes, config.seed)  # only reads
  else:
    # Made in memory first, so a split that does not fit the labels is refused with nothing written.
    split = splits.make_splits(dataset.labels, dataset.num_classes, sizes, config.seed, dataset.label_names,
                               specimens=dataset.specimens)
  check_duration(config, work_dir, dataset, split)
  if not saved:
    split = splits.load_or_make_splits(work_dir, dataset, sizes, config.seed)
  folder.standardise_on(dataset, split["train"], config.data.standardise)
  save_summary(config, work_dir, dataset, split)
  return dataset, split


def load_summary(config, work_dir: str) -> DataSummary:
  """The training data's summary from W/data_summary.json; a workdir trained before the file existed has its data
  loaded instead (which must still be where the config says)."""
  path = os.path.join(work_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    return DataSummary.of(*prepare_data(config, work_dir))
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
    summary = DataSummary(stress_times=np.asarray(raw["stress_times"], np.float64),
                          label_names=list(raw["label_names"]), image_shape=tuple(raw["image_shape"]),
                          dtype=np.dtype(raw["dtype"]), mean=float(raw["mean"]), std=float(raw["std"]),
                          split_sizes={k: int(v) for k, v in raw["split_sizes"].items()},
                          pixel_size_nm=raw.get("pixel_size_nm"), intensity_range=raw.get("intensity_range"),
                          pixel_size_range_nm=raw.get("pixel_size_range_nm"),
                          resampled_to_nm=raw.get("resampled_to_nm"))
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise DataError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it to reload the training data "
                    f"instead") from None
  # Read back like input: a tampered or damaged summary would standardise every new image wrongly.
  times = summary.stress_times
  if (times.ndim != 1 or len(times) < 2 or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0)
      or len(summary.label_names) != len(times) or not (math.isfinite(summary.mean) and math.isfinite(summary.std)
                                                        and summary.std > 0)):
    raise DataError(f"{path} holds impossible values (stress times {times.tolist()}, mean {summary.mean}, std "
                    f"{summary.std}); delete it to reload the training data instead")
  return summary
