"""Classifier metrics against hand-computed values."""
import math

import numpy as np
import pytest

from copper_jax import metrics


def test_confusion_rows_are_true_labels_columns_predictions():
  true = [0, 0, 1, 2, 2, 2]
  pred = [0, 1, 1, 2, 0, 2]
  np.testing.assert_array_equal(metrics.confusion_matrix(true, pred, 4),
                                [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])


def test_per_label_accuracy_is_nan_for_a_label_without_images():
  confusion = metrics.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 4)
  per_label = metrics.per_label_accuracy(confusion)
  np.testing.assert_allclose(per_label[:3], [0.5, 1.0, 2 / 3])
  assert math.isnan(per_label[3])


def test_accuracy_and_mae_in_label_steps():
  true, pred = [0, 3, 5, 9], [0, 4, 2, 9]
  assert metrics.accuracy(true, pred) == 0.5
  assert metrics.mean_absolute_error(true, pred) == (0 + 1 + 3 + 0) / 4


def test_average_ranks_share_tied_positions():
  np.testing.assert_array_equal(metrics.average_ranks([10, 20, 10, 30, 20, 20]), [1.5, 4, 1.5, 6, 4, 4])


def test_spearman_with_ties_matches_hand_example():
  # ranks true [1.5, 1.5, 3, 4], predicted [1, 2.5, 2.5, 4]; centred: [-1, -1, .5, 1.5] and [-1.5, 0, 0, 1.5];
  # sum of products 3.75 over sqrt(4.5 * 4.5) = 5/6.
  assert metrics.spearman([0, 0, 1, 2], [0, 1, 1, 2]) == pytest.approx(5 / 6)


def test_spearman_perfect_reversed_and_undefined():
  assert metrics.spearman([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(1.0)
  assert metrics.spearman([0, 1, 2, 3], [3, 2, 1, 0]) == pytest.approx(-1.0)
  assert math.isnan(metrics.spearman([0, 1, 2], [4, 4, 4]))
  assert math.isnan(metrics.spearman([1], [1]))


def test_summary_is_json_ready():
  s = metrics.summary([0, 1, 1], [0, 1, 0], 3)
  assert s["num_images"] == 3 and s["accuracy"] == pytest.approx(2 / 3)
  assert s["per_label_accuracy"] == [1.0, 0.5, None]
  assert s["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
  empty = metrics.summary([], [], 2)
  assert empty["accuracy"] is None and empty["spearman"] is None and empty["mae_label_steps"] is None
