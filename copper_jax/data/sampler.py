"""Random patch batches for training and whole-image batches for evaluation, both standardised float32."""
import functools
import itertools
import queue
import threading

import numpy as np

from copper_jax import config_utils
from copper_jax.data.folder import STD_EPS
from copper_jax.errors import ConfigError, DataError


def patches_per_image(image_shape, patch_size: int) -> int:
  """Patches whose pixels add up to (at least) one image's area: ceil(H * W / patch_size**2)."""
  _check_positive("patch_size", patch_size)
  height, width = image_shape
  return -(-int(height) * int(width) // int(patch_size) ** 2)


def run_steps(train_config, image_shape, num_train_images: int) -> int:
  """A training run's number of steps: `num_steps`, or `num_epochs` epochs that each cover every training image's
  area once in patches (`patches_per_image`). The one count training, resuming and the duration checks share."""
  per_image = patches_per_image(image_shape, train_config.patch_size) if train_config.num_epochs else 1
  return config_utils.total_steps(train_config, num_train_images, patches_per_image=per_image)


def steps_per_epoch(num_images: int, batch_size: int, patches_per_image: int = 1) -> int:
  """Batches in one epoch, ceil(num_images * patches_per_image / batch_size).

  An epoch draws as many patch pixels as the training images hold (`patches_per_image` from `patches_per_image()`),
  so it means what it does when whole images are the input: every image's area seen once, here in expectation,
  since patch positions are random rather than a tiling.
  """
  _check_positive("batch_size", batch_size)
  _check_positive("patches_per_image", patches_per_image)
  return -(-int(num_images) * int(patches_per_image) // int(batch_size))


class PatchSampler:
  """Batches of random square patches, a pure function of (seed, step).

  Image choice: the images in `indices` are visited in a fresh permutation every round (permutation seeded with
  (seed, 0, round)); step s takes positions [s*B, (s+1)*B) of that endless sequence, so each round takes one patch
  of every image and a batch may straddle two rounds. An epoch (`steps_per_epoch`) is `patches_per_image` rounds.
  Patch positions (and flips/rotations when enabled) are uniform, drawn from a generator seeded with
  (seed, 1, step). A resumed run therefore sees exactly the batches it would have seen. Flips and rot90 are off
  by default because SEM detectors shade directionally.
  """

  def __init__(self, dataset, indices, patch_size: int, batch_size: int, seed: int, flips: bool = False,
               rot90: bool = False, with_masks: bool = False):
    _check_positive("patch_size", patch_size)
    _check_positive("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ConfigError(f"seed={seed!r}: the sampler seed must be an integer >= 0")
    height, width = dataset.image_shape
    if patch_size > min(height, width):
      raise ConfigError(f"patch_size={patch_size} is larger than the {height}x{width} (H x W) images of "
                        f"{dataset.root}: lower patch_size or lower crop_bottom")
    self._indices = _check_indices(dataset, indices)
    _check_masks(dataset, with_masks)
    self.dataset = dataset
    self.patch_size = int(patch_size)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.flips = flips
    self.rot90 = rot90
    self.with_masks = with_masks
    self._mean = dataset.mean.astype(np.float32)
    self._inv_std = (1.0 / np.maximum(dataset.std, STD_EPS)).astype(np.float32)
    self._tau = dataset.tau.astype(np.float32)

  def batch(self, step: int) -> dict:
    """{"image": (B,P,P,1) float32, "label": (B,) int32, "tau": (B,) float32, "index": (B,) int32, and
    "mask": (B,P,P) float32 {0,1} with_masks} for training step `step` (>= 0)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"step must be an integer >= 0, got {step!r}")
    size, count = self.patch_size, self.batch_size
    chosen = self._images_for_step(int(step))
    rng = np.random.default_rng([self.seed, 1, int(step)])
    height, width = self.dataset.image_shape
    ys = rng.integers(0, height - size + 1, count)
    xs = rng.integers(0, width - size + 1, count)
    # drawn after the positions, so switching augmentation on or off keeps the same crops
    flip_rows = rng.random(count) < 0.5 if self.flips else np.zeros(count, bool)
    flip_cols = rng.random(count) < 0.5 if self.flips else np.zeros(count, bool)
    turns = rng.integers(0, 4, count) if self.rot90 else np.zeros(count, np.int64)

    def crop(pixels, b):
      patch = pixels[ys[b]:ys[b] + size, xs[b]:xs[b] + size]
      if flip_rows[b]:
        patch = patch[::-1]
      if flip_cols[b]:
        patch = patch[:, ::-1]
      return np.rot90(patch, turns[b]) if turns[b] else patch

    image = np.empty((count, size, size), np.float32)
    for b, i in enumerate(chosen):
      image[b] = crop(self.dataset.images[i], b)  # converts only the patch to float32
    image -= self._mean[chosen][:, None, None]
    image *= self._inv_std[chosen][:, None, None]
    labels = self.dataset.labels[chosen]
    out = {"image": image[..., None], "label": labels.astype(np.int32), "tau": self._tau[labels],
           "index": chosen.astype(np.int32)}
    if self.with_masks:
      mask = np.empty((count, size, size), np.float32)
      for b, i in enumerate(chosen):
        mask[b] = crop(self.dataset.masks[i], b)
      out["mask"] = mask
    return out

  def iterate(self, start_step: int, num_steps: int | None, prefetch: int = 2):
    """Yields (step, batch) for steps start_step .. start_step + num_steps - 1 (endless when num_steps is None).

    A daemon thread builds up to `prefetch` batches ahead; its exceptions are raised here, and closing the
    generator stops it.
    """
    _check_positive("prefetch", prefetch)
    steps = itertools.count(start_step) if num_steps is None else range(start_step, start_step + num_steps)
    ready = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item) -> bool:
      # time out now and then, so a worker blocked on a full queue notices the consumer has gone
      while not stop.is_set():
        try:
          ready.put(item, timeout=0.05)
          return True
        except queue.Full:
          pass
      return False

    def work():
      try:
        for step in steps:
          if not put((step, self.batch(step))):
            return
        put(_END)
      except BaseException as e:  # everything, so the consumer never waits on a dead worker
        put(_Failure(e))

    worker = threading.Thread(target=work, name="PatchSampler.iterate", daemon=True)
    worker.start()
    try:
      while True:
        item = ready.get()
        if item is _END:
          return
        if isinstance(item, _Failure):
          raise item.error
        yield item
    finally:
      stop.set()
      worker.join()

  def _images_for_step(self, step: int) -> np.ndarray:
    """(B,) dataset indices for `step`: positions step*B .. of the per-epoch permutations of `indices`."""
    n = len(self._indices)
    positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    epochs = positions // n
    chosen = np.empty(self.batch_size, np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      chosen[here] = self._indices[_epoch_permutation(self.seed, int(epoch), n)[positions[here] % n]]
    return chosen


def whole_image_batches(dataset, indices, batch_size: int, with_masks: bool = False):
  """Yields every image in `indices` once, standardised, in batches of exactly `batch_size`.

  Keys: "image" (B,H,W,1) float32, "label" (B,) int32, "tau" (B,) float32, "index" (B,) int32, "weight" (B,)
  float32, and "mask" (B,H,W) float32 with_masks. The last batch is padded with copies of its first image with
  weight 0 (1 for real images), so a jitted evaluation never recompiles and weighted means stay unbiased.
  """
  _check_positive("batch_size", batch_size)
  indices = _check_indices(dataset, indices, allow_empty=True)
  _check_masks(dataset, with_masks)
  tau = dataset.tau.astype(np.float32)
  for start in range(0, len(indices), batch_size):
    real = indices[start:start + batch_size]
    chosen = np.concatenate([real, np.repeat(real[:1], batch_size - len(real))])
    image = np.empty((batch_size, *dataset.image_shape), np.float32)
    for b, i in enumerate(real):
      image[b] = dataset.standardised(i)
    image[len(real):] = image[0]
    labels = dataset.labels[chosen]
    out = {"image": image[..., None], "label": labels.astype(np.int32), "tau": tau[labels],
           "index": chosen.astype(np.int32), "weight": (np.arange(batch_size) < len(real)).astype(np.float32)}
    if with_masks:
      out["mask"] = np.stack([dataset.masks[i] for i in chosen]).astype(np.float32)
    yield out


_END = object()


class _Failure:
  """An exception raised in the prefetch worker, carried to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """Read-only permutation of range(n) for one epoch."""
  order = np.random.default_rng([seed, 0, epoch]).permutation(n)
  order.flags.writeable = False
  return order


def _check_positive(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ConfigError(f"{name}={value!r}: must be an integer >= 1")


def _check_indices(dataset, indices, allow_empty: bool = False) -> np.ndarray:
  """(n,) int64 indices into dataset.images; ConfigError when empty (unless allowed), ValueError out of range."""
  indices = np.asarray(indices).ravel()
  if indices.size == 0:
    if allow_empty:
      return indices.astype(np.int64)
    raise ConfigError(f"no images selected from {dataset.root}: the split is empty; raise the split sizes")
  if not np.issubdtype(indices.dtype, np.integer) or indices.min() < 0 or indices.max() >= len(dataset.images):
    raise ValueError(f"indices must be integers in [0, {len(dataset.images)}), got {indices!r}")
  return indices.astype(np.int64)


def _check_masks(dataset, with_masks: bool) -> None:
  if with_masks and dataset.masks is None:
    raise DataError(f"{dataset.root}: with_masks needs ground-truth masks, but this dataset has no masks folder; "
                    f"use a synthetic dataset or turn masks off")
