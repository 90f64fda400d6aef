"""Per-sample rows of predictions: the t interval covers as it claims, g is inverted, odd images are flagged."""
import numpy as np
import pytest

from copper_jax import sample_estimates
from copper_jax.data.prepare import DataSummary


def test_sample_interval_covers_the_true_mean_at_the_sizes_users_have():
  """Fields of view and seeds each shift the fraction; with 3 fields and 2 seeds the 95% interval must cover the
  true sample mean in about 95% of reruns (a percentile bootstrap would cover far less at these sizes)."""
  rng = np.random.default_rng(0)
  runs, covered = 300, 0
  for _ in range(runs):
    fraction_SxN = (0.4 + rng.normal(0, 0.05, (1, 3)) + rng.normal(0, 0.03, (2, 1))
                    + rng.normal(0, 0.02, (2, 3)))
    _, low, high, over = sample_estimates.sample_interval(fraction_SxN)
    covered += low <= 0.4 <= high
  assert over == "fields of view and seeds"
  assert 0.92 <= covered / runs <= 1.0
  assert sample_estimates.sample_interval(np.full((1, 1), 0.3))[1:] == (None, None, "none (one field of view, one seed)")


def test_equivalent_stress_time_inverts_a_monotone_g_only():
  times = np.array([0.0, 2.0, 4.0, 8.0])
  g = np.array([0.0, 0.5, 0.75, 1.0])
  assert sample_estimates.equivalent_stress_time(0.5, g, times) == (2.0, None)
  assert sample_estimates.equivalent_stress_time(0.875, g, times)[0] == pytest.approx(6.0)
  assert sample_estimates.equivalent_stress_time(0.5, np.array([0.0, 1.0, 1.0, 1.0]), times)[0] is None  # a step
  assert "outside" in sample_estimates.equivalent_stress_time(1.2, g, times)[1]
  rows = sample_estimates.sample_rows([{"sample": "b", "fraction_S": [0.5, 0.5], "flags": []},
                              {"sample": "a", "fraction_S": [0.74, 0.78], "flags": ["odd"]},
                              {"sample": "a", "fraction_S": [0.75, 0.73], "flags": []}], g, times)
  assert [r["sample"] for r in rows] == ["a", "b"]
  assert rows[0]["stress_time"] == pytest.approx(4.0) and rows[0]["flagged_fields"] == 1
  assert rows[0]["stress_time_low"] < 4.0 < rows[0]["stress_time_high"]


def test_images_unlike_the_training_set_are_flagged():
  summary = DataSummary(stress_times=np.array([0.0, 1.0]), label_names=["0", "1"], image_shape=(8, 8),
                        dtype=np.dtype(np.uint8), mean=100.0, std=20.0, split_sizes={"train": 2},
                        pixel_size_nm=2.5, intensity_range={"mean": [90.0, 110.0], "std": [15.0, 25.0]})
  rng = np.random.default_rng(1)
  like = np.clip(rng.normal(100, 20, (64, 64)), 0, 255)
  assert sample_estimates.distribution_flags(like, 2.51, summary) == []
  flags = sample_estimates.distribution_flags(like + 60, 5.0, summary, info_bar_rows=10, crop_bottom=0)
  assert len(flags) == 3
  assert "pixel size 5 nm, trained on 2.5 nm" in flags[0] and "brightness" in flags[1] and "info bar" in flags[2]
  assert "contrast" in sample_estimates.distribution_flags(like * 3 - 200, 2.5, summary)[-1]
