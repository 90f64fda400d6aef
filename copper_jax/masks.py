"""Masks from several views or seeds, a training-free baseline, and the IoU that scores them (numpy, host side).

Test-time flips: a net trained without flips may still answer a flipped image about as well, and the average of its
answers over the four flips is a cheaper ensemble than more seeds. Seed ensembles: the mean mask of the seeds of one
hypothesis. Both take masks in and give masks out, so prediction can use them as the sweep's evaluation does.

The local standard-deviation filter is the baseline a mask must beat to show it learned something from the weak
labels: smoothed surface has less local contrast than rough surface in most SEM images, and the filter needs no
training. It thresholds each image's local std map at its Otsu threshold, so it uses no label and no true mask.
"""
from typing import Callable

import numpy as np

# The four flips of an image; each is its own inverse, so the same function maps a flipped mask back.
FLIPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "rows": lambda x: x[..., ::-1, :],
    "columns": lambda x: x[..., :, ::-1],
    "both": lambda x: x[..., ::-1, ::-1],
}
LOCAL_STD_WINDOW = 9  # px: about a nodule and its neighbours in the demo's images


def flip_average(predict: Callable[[np.ndarray], np.ndarray], images_BxHxW: np.ndarray) -> np.ndarray:
  """The mean of `predict` over the four flips of a batch of images, each mask flipped back: (..., H, W).

  `predict` maps images (B, H, W) to masks (..., B, H, W) with the image axes last."""
  return np.mean([flip(np.asarray(predict(flip(images_BxHxW)))) for flip in FLIPS.values()], axis=0)


def confusion(mask_BxHxW: np.ndarray, truth_BxHxW: np.ndarray, threshold: float = 0.5) -> dict:
  """Pixel counts (tp, fp, fn, tn) of the thresholded masks against true masks (> 0.5 is smoothed), summed."""
  predicted = np.asarray(mask_BxHxW) >= threshold
  truth = np.broadcast_to(np.asarray(truth_BxHxW) > 0.5, predicted.shape)
  return {"tp": float(np.sum(predicted & truth)), "fp": float(np.sum(predicted & ~truth)),
          "fn": float(np.sum(~predicted & truth)), "tn": float(np.sum(~predicted & ~truth))}


def add_counts(total: dict | None, counts: dict) -> dict:
  return dict(counts) if total is None else {k: total[k] + counts[k] for k in counts}


def mean_iou(counts: dict) -> dict:
  """IoU of the smoothed class, of the rough class, and their mean, from pooled pixel counts."""
  tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
  smoothed = tp / max(tp + fp + fn, 1.0)
  rough = tn / max(tn + fn + fp, 1.0)
  return {"smoothed": smoothed, "rough": rough, "mean_iou": 0.5 * (smoothed + rough)}


def _box_mean(x_BxHxW: np.ndarray, window: int) -> np.ndarray:
  """Mean over a window x window box around each pixel, the image edge reflected."""
  half = window // 2
  padded = np.pad(x_BxHxW, ((0, 0), (half + 1, half), (half + 1, half)), mode="reflect")
  total = padded.cumsum(1).cumsum(2)
  return (total[:, window:, window:] - total[:, :-window, window:] - total[:, window:, :-window]
          + total[:, :-window, :-window]) / window**2


def local_std(images_BxHxW: np.ndarray, window: int = LOCAL_STD_WINDOW) -> np.ndarray:
  """The standard deviation of the gray levels in a window x window box around each pixel, (B, H, W)."""
  x = np.asarray(images_BxHxW, np.float64)
  return np.sqrt(np.maximum(_box_mean(x * x, window) - _box_mean(x, window)**2, 0.0))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
  """The threshold that maximises the between-class variance of the two sides' values (Otsu's method)."""
  counts, edges = np.histogram(np.asarray(values, np.float64).ravel(), bins=bins)
  centres = 0.5 * (edges[1:] + edges[:-1])
  weight_low = np.cumsum(counts)
  weight_high = weight_low[-1] - weight_low
  sum_low = np.cumsum(counts * centres)
  mean_low = sum_low / np.maximum(weight_low, 1)
  mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
  between = weight_low * weight_high * (mean_low - mean_high)**2
  return float(edges[1:][np.argmax(between)])


def local_std_masks(images_BxHxW: np.ndarray, window: int = LOCAL_STD_WINDOW) -> np.ndarray:
  """The training-free baseline: 1 (smoothed) where an image's local std is below its own Otsu threshold."""
  std_BxHxW = local_std(images_BxHxW, window)
  return np.stack([(s <= otsu_threshold(s)).astype(np.float32) for s in std_BxHxW])
