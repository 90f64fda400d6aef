"""Confidence intervals for a mean loss over seeds x held-out units, at the small sizes users have.

A sweep's held-out error is a mean over S seeds (training runs) crossed with U held-out units (images, or
specimens), the units stratified by label. Both the seeds and the units vary on a rerun, so both belong in the
interval; but with 2 seeds and 2 units per label a percentile bootstrap is too narrow (its spread shrinks by
sqrt((n-1)/n) at each level: about 0.71 at n = 2). Here instead:

  loss[s, u] = mu(label of u) + a_s + b_u + e_su    (labels fixed; seed a, unit b and residual e random)
  Var(grand mean) = var_a / S + var_b / U + var_e / (S U)

estimated from the two-way mean squares (units measured within their label) as (MS_seed + MS_unit) / (S U), which
counts var_e / (S U) twice and so errs wide, with a Student t quantile at Satterthwaite's degrees of freedom. `tests/test_stats.py` checks by simulation that the 95% interval
covers the true mean about 95% of the time at 2-3 seeds and 2-5 units per label.
"""
import math

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
  tiny = 1e-300
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 300):
    m2 = 2 * m
    for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)), -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
      d = 1.0 + num * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + num / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1.0) < 1e-14:
      break
  return h


def incomplete_beta(a: float, b: float, x: float) -> float:
  """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
  tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
  return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
  """The t value below which a fraction p (0 < p < 1) of Student's t with `df` degrees of freedom lies."""
  if not 0.0 < p < 1.0 or not df > 0:
    raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
  if p < 0.5:
    return -t_quantile(1.0 - p, df)
  lo, hi = 0.0, 1.0
  while t_cdf(hi, df) < p:
    hi *= 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    if hi - lo < 1e-12 * max(1.0, hi):
      break
  return 0.5 * (lo + hi)


def _within_label_sum_of_squares(values_U: np.ndarray, labels_U: np.ndarray) -> tuple[float, int]:
  """Sum of squared deviations from each label's mean, and its degrees of freedom (units minus labels)."""
  total, df = 0.0, 0
  for t in np.unique(labels_U):
    group = values_U[labels_U == t]
    total += float(np.sum(np.square(group - group.mean())))
    df += len(group) - 1
  return total, df


def crossed_mean_interval(loss_SxU, labels_U, level: float = 0.95) -> dict:
  """The mean of `loss_SxU` with its standard error and `level` interval, seeds and units both random.

  Units are compared within their label (labels are the design's fixed stress times). With a single unit in every
  label the units are compared across labels instead, which can only widen the interval. Returns mean, se, df,
  ci (a pair) and how the variance was estimated.
  """
  loss = np.asarray(loss_SxU, np.float64)
  labels = np.asarray(labels_U)
  S, U = loss.shape
  mean = float(loss.mean())
  unit_means = loss.mean(axis=0)
  ss_unit, df_unit = _within_label_sum_of_squares(unit_means, labels)
  method = "units within labels"
  if df_unit == 0:
    ss_unit, df_unit = float(np.sum(np.square(unit_means - mean))), U - 1
    method = "units across labels (one unit per label)"
  if df_unit == 0:
    raise ValueError("an interval needs at least two held-out units")
  ms_unit = S * ss_unit / df_unit
  if S == 1:
    terms = [(1.0, ms_unit, df_unit)]
  else:
    seed_means = loss.mean(axis=1)
    ms_seed = U * float(np.sum(np.square(seed_means - mean))) / (S - 1)
    # MS_seed + MS_unit - MS_resid is the unbiased estimate, but with 2 seeds it is often near zero or negative,
    # and an interval built on it then falls short of its level; leaving the residual in (it counts the
    # seed-by-unit noise once more) keeps every term positive and the coverage at its level (tests/test_stats.py).
    terms = [(1.0, ms_seed, S - 1), (1.0, ms_unit, df_unit)]
    method += f", {S} seeds"
  var_sum = sum(c * ms for c, ms, _ in terms)
  variance = var_sum / (S * U)
  se = math.sqrt(max(variance, 0.0))
  denominator = sum((c * ms) ** 2 / df for c, ms, df in terms)
  df = var_sum ** 2 / denominator if denominator > 0 else float(df_unit)
  half = t_quantile(0.5 + level / 2.0, df) * se
  return {"mean": mean, "se": se, "df": df, "ci": [mean - half, mean + half], "method": method}


def variance_components(loss_SxU, labels_U) -> dict:
  """Estimates of the seed, unit and residual variances of the model above (method of moments, each clipped at 0),
  from the mean squares `crossed_mean_interval` uses, so that its interval can be projected to other sizes.

  `var_seed` is None with a single seed (nothing to estimate it from); the residual is then counted in `var_unit`.
  Returns also the sizes they came from (num_seeds, num_units, num_labels).
  """
  loss = np.asarray(loss_SxU, np.float64)
  labels = np.asarray(labels_U)
  S, U = loss.shape
  T = len(np.unique(labels))
  mean = float(loss.mean())
  unit_means = loss.mean(axis=0)
  ss_unit, df_unit = _within_label_sum_of_squares(unit_means, labels)
  if df_unit == 0:
    ss_unit, df_unit = float(np.sum(np.square(unit_means - mean))), U - 1
  if df_unit == 0:
    raise ValueError("variance components need at least two held-out units")
  ms_unit = S * ss_unit / df_unit
  sizes = {"num_seeds": S, "num_units": U, "num_labels": T}
  if S == 1:
    return {"var_seed": None, "var_unit": ms_unit, "var_resid": 0.0, **sizes}
  seed_means = loss.mean(axis=1)
  ms_seed = U * float(np.sum(np.square(seed_means - mean))) / (S - 1)
  resid = loss - seed_means[:, None] - unit_means[None, :] + mean
  ms_resid = float(np.sum(np.square(resid))) / ((S - 1) * (U - 1))
  return {"var_seed": max((ms_seed - ms_resid) / U, 0.0), "var_unit": max((ms_unit - ms_resid) / S, 0.0),
          "var_resid": ms_resid, **sizes}


def projected_interval(components: dict, num_seeds: int, units_per_label: int, num_labels: int) -> dict:
  """The standard error and degrees of freedom `crossed_mean_interval` is expected to give at `num_seeds` seeds and
  `units_per_label` units in each of `num_labels` labels, for losses with these variance components."""
  S, T = int(num_seeds), int(num_labels)
  U = int(units_per_label) * T
  var_seed = components["var_seed"]
  if var_seed is None and S > 1:
    raise ValueError("projecting to more seeds needs variance components estimated from at least two seeds")
  ms_unit = S * components["var_unit"] + components["var_resid"]
  df_unit = U - T if units_per_label >= 2 else U - 1
  terms = [(ms_unit, df_unit)]
  if S > 1:
    terms.append((U * var_seed + components["var_resid"], S - 1))
  var_sum = sum(ms for ms, _ in terms)
  denominator = sum(ms ** 2 / df for ms, df in terms)
  df = var_sum ** 2 / denominator if denominator > 0 else float(df_unit)
  return {"se": math.sqrt(max(var_sum, 0.0) / (S * U)), "df": df}


def chance_to_clear(effect: float, se: float, df: float, level: float) -> float:
  """The probability that a `level` interval around an estimate of `effect` (standard error `se`, t with `df`
  degrees of freedom) lies wholly on the side of zero where `effect` is (shifted-t approximation of its power)."""
  if se <= 0:
    return 1.0 if effect != 0 else 0.0
  return 1.0 - t_cdf(t_quantile(0.5 + level / 2.0, df) - abs(effect) / se, df)
