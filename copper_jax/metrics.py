"""Classification metrics for ordered labels (stress times), in numpy on the host.

Stress times are ordered, so next to accuracy and the confusion matrix we report the mean absolute error in label
steps (an off-by-one counts 1, an off-by-ten counts 10) and Spearman's rank correlation between true and predicted
labels. Every function takes integer class indices; undefined values (no images, constant ranks) are NaN, and
`summary` turns them into None for JSON.
"""
import math

import numpy as np


def _as_labels(true_N, pred_N):
  true_N, pred_N = np.asarray(true_N).ravel(), np.asarray(pred_N).ravel()
  if true_N.shape != pred_N.shape:
    raise ValueError(f"true and predicted labels differ in length: {true_N.shape} vs {pred_N.shape}")
  return true_N.astype(np.int64), pred_N.astype(np.int64)


def accuracy(true_N, pred_N) -> float:
  """Fraction of images whose predicted label is the true one; NaN for no images."""
  true_N, pred_N = _as_labels(true_N, pred_N)
  return float(np.mean(true_N == pred_N)) if true_N.size else math.nan


def confusion_matrix(true_N, pred_N, num_classes: int) -> np.ndarray:
  """(K, K) int64 counts: row = true label, column = predicted label."""
  true_N, pred_N = _as_labels(true_N, pred_N)
  confusion_KxK = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion_KxK, (true_N, pred_N), 1)
  return confusion_KxK


def per_label_accuracy(confusion_KxK) -> np.ndarray:
  """(K,) accuracy of the images of each true label; NaN for a label without images."""
  confusion_KxK = np.asarray(confusion_KxK)
  count_K = confusion_KxK.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count_K > 0, np.diag(confusion_KxK) / np.maximum(count_K, 1), np.nan)


def mean_absolute_error(true_N, pred_N) -> float:
  """Mean |predicted - true| in label steps (class indices, not stress-time units); NaN for no images."""
  true_N, pred_N = _as_labels(true_N, pred_N)
  return float(np.mean(np.abs(pred_N - true_N))) if true_N.size else math.nan


def average_ranks(x_N) -> np.ndarray:
  """(N,) ranks 1..N of `x_N`, tied values sharing the mean of the ranks they span (as in scipy.stats.rankdata)."""
  x_N = np.asarray(x_N).ravel()
  order = np.argsort(x_N, kind="stable")
  sorted_x = x_N[order]
  # Start of each run of equal values in sorted order; a run spanning positions i..j gets rank (i + j) / 2 + 1.
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], x_N.size] - 1
  run_rank = (starts + ends) / 2.0 + 1.0
  ranks = np.empty(x_N.size, np.float64)
  ranks[order] = np.repeat(run_rank, ends - starts + 1)
  return ranks


def spearman(true_N, pred_N) -> float:
  """Spearman's rank correlation with ties (Pearson correlation of average ranks); NaN when either side is
  constant or there are fewer than two images."""
  true_N, pred_N = _as_labels(true_N, pred_N)
  if true_N.size < 2:
    return math.nan
  a, b = average_ranks(true_N), average_ranks(pred_N)
  a, b = a - a.mean(), b - b.mean()
  denominator = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
  return float(np.sum(a * b) / denominator) if denominator > 0 else math.nan


def _finite_or_none(x):
  return None if x is None or not math.isfinite(x) else float(x)


def summary(true_N, pred_N, num_classes: int) -> dict:
  """Every metric of one split as JSON-ready values (NaN -> None)."""
  confusion_KxK = confusion_matrix(true_N, pred_N, num_classes)
  return {
      "num_images": int(np.asarray(true_N).size),
      "accuracy": _finite_or_none(accuracy(true_N, pred_N)),
      "mae_label_steps": _finite_or_none(mean_absolute_error(true_N, pred_N)),
      "spearman": _finite_or_none(spearman(true_N, pred_N)),
      "per_label_accuracy": [_finite_or_none(a) for a in per_label_accuracy(confusion_KxK)],
      "confusion": confusion_KxK.tolist(),
  }


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple:
  """Wilson score interval (95% by default) of a proportion; (nan, nan) for no trials.

  Unlike the normal approximation it stays inside [0, 1] and keeps close to its nominal coverage with the handful
  of test images per label a blind test has.
  """
  if trials <= 0:
    return math.nan, math.nan
  p = successes / trials
  z2 = z * z
  centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
  half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
  return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first_right: int, only_second_right: int) -> float:
  """Two-sided exact McNemar p-value from the discordant pairs of two raters on the same images.

  Under "equally accurate", each discordant image is a fair coin between the raters, so the smaller count is
  Binomial(b + c, 1/2); the p-value doubles its lower tail (capped at 1). Images both got right or both got wrong
  say nothing about which rater is better and are not counted.
  """
  b, c = int(only_first_right), int(only_second_right)
  if b < 0 or c < 0:
    raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
  n = b + c
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail)


def paired_comparison(true_N, first_N, second_N, num_classes: int, alpha: float = 0.05) -> dict:
  """Two raters' answers on the same images: accuracies, the discordant pairs, exact McNemar and a verdict.

  `verdict` is "first better", "second better" or "no detectable difference" at level `alpha`.
  """
  true_N, first_N = _as_labels(true_N, first_N)
  _, second_N = _as_labels(true_N, second_N)
  first_right, second_right = first_N == true_N, second_N == true_N
  only_first = int(np.sum(first_right & ~second_right))
  only_second = int(np.sum(second_right & ~first_right))
  p_value = mcnemar_exact(only_first, only_second)
  if p_value >= alpha or only_first == only_second:
    verdict = "no detectable difference"
  else:
    verdict = "first better" if only_first > only_second else "second better"
  return {"num_images": int(true_N.size), "first_accuracy": _finite_or_none(accuracy(true_N, first_N)),
          "second_accuracy": _finite_or_none(accuracy(true_N, second_N)),
          "both_right": int(np.sum(first_right & second_right)), "only_first_right": only_first,
          "only_second_right": only_second, "both_wrong": int(np.sum(~first_right & ~second_right)),
          "mcnemar_p": p_value, "alpha": alpha, "verdict": verdict}


def per_label_intervals(confusion_KxK) -> list:
  """Per true label [low, high] Wilson 95% interval of its accuracy ([None, None] for a label without images)."""
  confusion_KxK = np.asarray(confusion_KxK)
  rows = []
  for k in range(confusion_KxK.shape[0]):
    low, high = wilson_interval(int(confusion_KxK[k, k]), int(confusion_KxK[k].sum()))
    rows.append([_finite_or_none(low), _finite_or_none(high)])
  return rows
