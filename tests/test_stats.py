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


def _crossed_losses(rng, num_seeds, per_label, seed_sd, unit_sd, noise_sd, effect=0.0, labels=16):
  labels_U = np.repeat(np.arange(labels), per_label)
  loss = (effect + rng.normal(0.0, seed_sd, num_seeds)[:, None] + rng.normal(0.0, unit_sd, len(labels_U))[None, :]
          + rng.normal(0.0, noise_sd, (num_seeds, len(labels_U))))
  return loss, labels_U


def test_variance_components_recover_the_simulated_ones_and_project_the_interval_itself():
  rng = np.random.default_rng(2)
  loss, labels_U = _crossed_losses(rng, 12, 30, 0.002, 0.003, 0.001)
  c = stats.variance_components(loss, labels_U)
  assert c["var_unit"] == pytest.approx(0.003 ** 2, rel=0.2)
  assert c["var_resid"] == pytest.approx(0.001 ** 2, rel=0.1)
  assert c["var_seed"] == pytest.approx(0.002 ** 2, rel=0.8)  # 11 degrees of freedom
  # At the size it was estimated from, the projection is the interval's own standard error and df.
  small, labels_small = _crossed_losses(rng, 2, 3, 0.001, 0.002, 0.001)
  interval = stats.crossed_mean_interval(small, labels_small)
  projected = stats.projected_interval(stats.variance_components(small, labels_small), 2, 3, 16)
  assert projected["se"] == pytest.approx(interval["se"]) and projected["df"] == pytest.approx(interval["df"])
  one_seed = stats.variance_components(small[:1], labels_small)
  assert one_seed["var_seed"] is None
  with pytest.raises(ValueError, match="at least two seeds"):
    stats.projected_interval(one_seed, 3, 3, 16)


def test_the_projected_design_clears_about_as_often_as_the_power_it_was_sized_for():
  """Size a design from the true components for 80% power, then simulate it: the interval clears 70-92% of the
  time there, and clearly less often at a third of the units."""
  from copper_jax import evidence
  seed_sd, unit_sd, noise_sd, effect = 0.00005, 0.003, 0.001, 0.0008
  components = {"var_seed": seed_sd ** 2, "var_unit": unit_sd ** 2, "var_resid": noise_sd ** 2}
  need = evidence.needed(effect, components, 2, 2, 16, level=0.95)
  assert need["separable"] and 3 <= need["units_per_label"] <= 40, need
  rng = np.random.default_rng(5)

  def clear_rate(per_label, trials=300):
    hits = 0
    for _ in range(trials):
      loss, labels_U = _crossed_losses(rng, 2, per_label, seed_sd, unit_sd, noise_sd, effect)
      hits += stats.crossed_mean_interval(loss, labels_U)["ci"][0] > 0
    return hits / trials

  at_need = clear_rate(need["units_per_label"])
  assert 0.70 <= at_need <= 0.92, at_need
  assert clear_rate(max(need["units_per_label"] // 3, 2)) < at_need - 0.15


def test_curves_too_alike_are_called_inseparable_and_seeds_cannot_replace_missing_images():
  from copper_jax import evidence
  components = {"var_seed": 1e-8, "var_unit": 0.003 ** 2, "var_resid": 1e-6}
  tiny = evidence.needed(1e-6, components, 2, 2, 16, level=0.95)
  assert tiny == {"units_per_label": None, "seeds": None, "separable": False}
  # The image variation does not shrink with seeds: at 2 images per stress time no number of seeds suffices.
  moderate = evidence.needed(0.0012, components, 2, 2, 16, level=0.95)
  assert moderate["units_per_label"] is not None and moderate["seeds"] is None
