"""Intervals of the width they claim, at the sizes users have (2-3 seeds, 2-5 held-out images per label)."""
import numpy as np
import pytest

from copper_jax import stats


@pytest.mark.parametrize("p, df, expected", [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 10, 2.2281),
                                             (0.975, 1e7, 1.9600), (0.95, 5, 2.0150), (0.025, 4, -2.7764)])
def test_t_quantiles_match_the_tables(p, df, expected):
  assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_t_cdf_inverts_the_quantile_at_fractional_degrees_of_freedom():
  for df in (1.3, 2.7, 7.5):
    assert stats.t_cdf(stats.t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-9)


def _coverage(num_seeds, per_label, seed_sd, unit_sd, noise_sd, trials=800, labels=16, rng_seed=0):
  """How often the 95% interval holds the true mean loss, over simulated sweeps whose losses have a known mean:
  a fixed mean per label, a random effect per seed (a training run) and per image, and skewed residuals (squared
  errors are skewed)."""
  rng = np.random.default_rng(rng_seed)
  mu_T = rng.uniform(0.002, 0.01, labels)
  labels_U = np.repeat(np.arange(labels), per_label)
  covered = 0
  for _ in range(trials):
    seed_S = rng.normal(0.0, seed_sd, num_seeds)
    unit_U = rng.normal(0.0, unit_sd, labels * per_label)
    noise = (rng.gamma(2.0, 1.0, (num_seeds, labels * per_label)) - 2.0) * noise_sd / np.sqrt(2.0)
    loss = mu_T[labels_U][None, :] + seed_S[:, None] + unit_U[None, :] + noise
    lo, hi = stats.crossed_mean_interval(loss, labels_U)["ci"]
    covered += lo <= mu_T.mean() <= hi
  return covered / trials


@pytest.mark.parametrize("num_seeds", [2, 3])
@pytest.mark.parametrize("per_label", [2, 5])
@pytest.mark.parametrize("seed_sd, unit_sd, noise_sd", [
    (0.0005, 0.002, 0.001),   # images differ most: the usual case
    (0.002, 0.0005, 0.001),   # one seed trained worse than the other
    (0.0, 0.002, 0.0),        # no seed effect at all
])
def test_95_percent_intervals_cover_the_truth_about_95_percent_of_the_time(num_seeds, per_label, seed_sd, unit_sd,
                                                                           noise_sd):
  coverage = _coverage(num_seeds, per_label, seed_sd, unit_sd, noise_sd)
  assert 0.90 <= coverage < 1.0, coverage


def test_a_percentile_bootstrap_would_be_too_narrow_here():
  """The reason for the method: at 2 seeds x 2 images per label, resampling seeds and images within labels covers
  the truth far less often than it claims."""
  rng = np.random.default_rng(1)
  mu_T = rng.uniform(0.002, 0.01, 16)
  labels_U = np.repeat(np.arange(16), 2)
  covered = 0
  for _ in range(300):
    loss = (mu_T[labels_U][None, :] + rng.normal(0, 0.002, 2)[:, None] + rng.normal(0, 0.002, 32)[None, :])
    draws = []
    for _ in range(200):
      seeds = rng.integers(0, 2, 2)
      images = np.concatenate([np.flatnonzero(labels_U == t)[rng.integers(0, 2, 2)] for t in range(16)])
      draws.append(loss[seeds][:, images].mean())
    lo, hi = np.percentile(draws, [2.5, 97.5])
    covered += lo <= mu_T.mean() <= hi
  assert covered / 300 < 0.85


def test_one_unit_per_label_is_compared_across_labels_and_one_seed_works():
  loss = np.array([[0.1, 0.2, 0.3, 0.4]])
  result = stats.crossed_mean_interval(loss, np.arange(4))
  assert result["method"].startswith("units across labels")
  assert result["ci"][0] < 0.25 < result["ci"][1] and result["df"] == pytest.approx(3)
  with pytest.raises(ValueError, match="at least two"):
    stats.crossed_mean_interval(np.array([[0.1]]), np.array([0]))
