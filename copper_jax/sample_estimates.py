"""From predicted mask fractions of new images to what a materials scientist reports: one row per sample.

Numpy in, rows out (no I/O). A sample is the sub-folder an image sits in; its fields of view are its images. The
fraction is on the hypothesis's scale, g(t_min) = 0 and g(t_max) = 1, not an absolute smoothed area; the equivalent
stress time inverts that same g, so it is "the etching time whose images the model sees this much of", and is
as good as g is.
"""
import numpy as np

from copper_jax import stats

# The training range of a statistic is widened by this share of its width (or of its value, when all training
# images agree) before a new image counts as outside it: rounding and a little drift are not a new distribution.
RANGE_SLACK = 0.1


def sample_interval(fraction_SxN: np.ndarray, level: float = 0.95):
  """(mean, low, high, what the interval is over) of a sample's fractions, seeds S by fields of view N.

  Fields of view and seeds are the two things a rerun would change, both random: the interval is the sweep's
  (`stats.crossed_mean_interval`, a Student t interval with Welch-Satterthwaite degrees of freedom) with the fields
  as its units, all of one label. With a single field it is over the seeds alone; with one field and one seed
  there is nothing to vary, and no interval.
  """
  S, N = fraction_SxN.shape
  mean = float(fraction_SxN.mean())
  if N > 1:
    result, over = stats.crossed_mean_interval(fraction_SxN, np.zeros(N), level), "fields of view"
  elif S > 1:  # the seeds are then the only units
    result, over = stats.crossed_mean_interval(fraction_SxN.T, np.zeros(S), level), "seeds"
  else:
    return mean, None, None, "none (one field of view, one seed)"
  if N > 1 and S > 1:
    over = "fields of view and seeds"
  return mean, float(result["ci"][0]), float(result["ci"][1]), over


def equivalent_stress_time(fraction: float, g_T: np.ndarray, stress_times_T: np.ndarray):
  """(stress time, None) whose g(t) equals `fraction`, by linear interpolation of g between the labels, or
  (None, reason) when g is not strictly increasing (a step, a scrambled control) or the fraction is outside it."""
  g_T = np.asarray(g_T, np.float64)
  if fraction is None or not np.all(np.diff(g_T) > 0):
    return None, "g is not strictly increasing, so it has no inverse"
  if not g_T[0] - 1e-9 <= fraction <= g_T[-1] + 1e-9:
    return None, f"fraction outside g's range [{g_T[0]:.3g}, {g_T[-1]:.3g}]"
  return float(np.interp(fraction, g_T, np.asarray(stress_times_T, np.float64))), None


def _outside(value: float, low_high, what: str, unit: str = "") -> str | None:
  low, high = low_high
  slack = RANGE_SLACK * ((high - low) if high > low else max(abs(high), 1e-12))
  if low - slack <= value <= high + slack:
    return None
  return f"{what} {value:.4g}{unit} outside the training images' {low:.4g}..{high:.4g}{unit}"


def distribution_flags(surface_HxW: np.ndarray, pixel_size_nm: float | None, summary,
                       info_bar_rows: int = 0, crop_bottom: int = 0) -> list[str]:
  """Why a new image looks unlike the training images (empty when it does not): its pixel size, its own mean
  brightness and contrast (std) against the training images' range, and an info bar the crop leaves in."""
  flags = []
  pixel_flag = summary.pixel_size_flag(pixel_size_nm)  # against the training files' range (or resampled size)
  if pixel_flag:
    flags.append(pixel_flag)
  ranges = summary.intensity_range or {}
  for key, what in (("mean", "brightness (mean)"), ("std", "contrast (std)")):
    if key in ranges:
      value = float(surface_HxW.mean(dtype=np.float64) if key == "mean" else surface_HxW.std(dtype=np.float64))
      flag = _outside(value, ranges[key], what)
      if flag:
        flags.append(flag)
  if info_bar_rows > crop_bottom:
    flags.append(f"seems to end in an info bar of {info_bar_rows} rows, but the model crops {crop_bottom}")
  return flags


def sample_rows(images: list[dict], g_T: np.ndarray, stress_times_T: np.ndarray) -> list[dict]:
  """One row per sample from per-image records {"sample", "fraction_S" (per seed), "flags"}, in sample order."""
  by_sample = {}
  for record in images:
    by_sample.setdefault(record["sample"], []).append(record)
  rows = []
  for sample in sorted(by_sample):
    records = by_sample[sample]
    fraction_SxN = np.stack([np.asarray(r["fraction_S"], np.float64) for r in records], axis=1)
    mean, low, high, over = sample_interval(fraction_SxN)
    t, why = equivalent_stress_time(mean, g_T, stress_times_T)
    # An interval reaching past g's ends means "at or beyond the first (last) label": invert the clipped bound.
    g_lo, g_hi = float(np.min(g_T)), float(np.max(g_T))
    t_low = equivalent_stress_time(min(max(low, g_lo), g_hi), g_T, stress_times_T)[0] if low is not None else None
    t_high = equivalent_stress_time(min(max(high, g_lo), g_hi), g_T, stress_times_T)[0] if high is not None else None
    rows.append({"sample": sample, "num_fields": fraction_SxN.shape[1], "num_seeds": fraction_SxN.shape[0],
                 "mean": mean, "ci95_low": low, "ci95_high": high, "interval_over": over,
                 "stress_time": t, "stress_time_low": t_low, "stress_time_high": t_high, "stress_time_note": why,
                 "flagged_fields": sum(1 for r in records if r["flags"])})
  return rows
