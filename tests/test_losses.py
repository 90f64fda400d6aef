"""Losses return (sum, count) pairs with hand-checkable values; padding never biases them."""
import jax.numpy as jnp
import numpy as np

from copper_jax import losses


def _masks():
  mask = np.zeros((3, 4, 4), np.float32)
  mask[0, :2] = 1.0        # fraction 0.5
  mask[1] = 0.25           # fraction 0.25, gray
  mask[2] = 1.0            # a padded image: weight 0
  return jnp.asarray(mask), jnp.asarray([1.0, 1.0, 0.0])


def test_mse_by_hand_and_padding_ignored():
  mask, weight = _masks()
  fraction = losses.mask_fraction(mask)
  np.testing.assert_allclose(fraction, [0.5, 0.25, 1.0])
  total, count = losses.proportion_mse(fraction, jnp.asarray([0.3, 0.25, 0.0]), weight)
  np.testing.assert_allclose([total, count], [0.04, 2.0], rtol=1e-6)


def test_bce_is_zero_at_a_perfect_fit_and_positive_otherwise():
  weight = jnp.ones(2)
  zero, _ = losses.proportion_bce(jnp.asarray([0.3, 0.8]), jnp.asarray([0.3, 0.8]), weight)
  off, _ = losses.proportion_bce(jnp.asarray([0.5, 0.8]), jnp.asarray([0.3, 0.8]), weight)
  assert abs(float(zero)) < 1e-5
  expected = -(0.3 * np.log(0.5) + 0.7 * np.log(0.5)) + (0.3 * np.log(0.3) + 0.7 * np.log(0.7))
  np.testing.assert_allclose(off, expected, rtol=1e-5)


def test_interval_is_zero_inside_the_band():
  total, _ = losses.proportion_interval(jnp.asarray([0.32, 0.5]), jnp.asarray([0.3, 0.3]), jnp.ones(2), 0.05)
  np.testing.assert_allclose(total, 0.15 ** 2, rtol=1e-5)


def test_binarisation_penalty_by_hand():
  mask, weight = _masks()
  total, count = losses.binarisation_penalty(mask, weight)
  np.testing.assert_allclose([total, count], [0.25 * 0.75, 2.0], rtol=1e-6)


def test_sums_over_batches_equal_one_big_batch():
  rng = np.random.default_rng(0)
  fraction, target = rng.random(10), rng.random(10)
  whole = losses.proportion_mse(fraction, target, np.ones(10))
  parts = [losses.proportion_mse(fraction[i:i + 4], target[i:i + 4], np.ones(len(fraction[i:i + 4])))
           for i in range(0, 10, 4)]
  np.testing.assert_allclose(sum(p[0] for p in parts) / sum(p[1] for p in parts), whole[0] / whole[1],
                             rtol=1e-6)


def test_mask_confusion_counts():
  mask = jnp.asarray([[[0.9, 0.1], [0.6, 0.2]]])
  truth = jnp.asarray([[[1, 1], [0, 0]]], jnp.float32)
  counts = losses.mask_confusion(mask, truth, jnp.ones(1))
  assert {k: float(v[0]) for k, v in counts.items()} == {"tp": 1.0, "fp": 1.0, "fn": 1.0, "tn": 1.0}


def test_shift_consistency_is_zero_for_one_mask_and_by_hand_otherwise():
  mask, weight = _masks()
  zero, count = losses.shift_consistency(mask, mask, weight)
  assert float(zero) == 0.0 and float(count) == 2.0
  other = np.asarray(mask).copy()
  other[0, 0, :] = 0.0     # 4 of 16 pixels move by 1: mean squared difference 0.25
  other[1, 3, 3] = 0.75    # 1 of 16 pixels moves by 0.5: 0.25 / 16
  other[2] = 0.0           # the padded image: weight 0, however far it moves
  total, count = losses.shift_consistency(mask, jnp.asarray(other), weight)
  np.testing.assert_allclose([total, count], [0.25 + 0.25 / 16, 2.0], rtol=1e-6)
