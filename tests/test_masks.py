"""Test-time flips, seed ensembles' scoring and the training-free local-std baseline (copper_jax/masks.py)."""
import numpy as np
import pytest

from copper_jax import masks


def test_flip_average_maps_every_flipped_mask_back():
  rng = np.random.default_rng(0)
  images = rng.random((2, 6, 8))
  # A predictor that answers each pixel from itself is flip-equivariant: the average is its plain answer.
  np.testing.assert_allclose(masks.flip_average(lambda x: x**2, images), images**2)
  # One that always marks the top-left pixel is not: each flip marks another corner once it is mapped back.
  corner = lambda x: np.pad(np.ones(x.shape[:-2] + (1, 1)), [(0, 0)] * (x.ndim - 2) + [(0, x.shape[-2] - 1),
                                                                                        (0, x.shape[-1] - 1)])
  averaged = masks.flip_average(corner, images)
  assert averaged.shape == images.shape
  for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
    assert averaged[0, y, x] == pytest.approx(0.25)
  assert averaged.sum() == pytest.approx(2.0)


def test_flip_average_keeps_a_members_axis_in_front():
  images = np.arange(2 * 4 * 4, dtype=float).reshape(2, 4, 4)
  stacked = masks.flip_average(lambda x: np.stack([x, -x]), images)
  np.testing.assert_allclose(stacked, np.stack([images, -images]))


def test_iou_from_counts_by_hand():
  predicted = np.array([[[1, 1, 0, 0]]], float)
  truth = np.array([[[1, 0, 1, 0]]], float)
  counts = masks.confusion(predicted, truth)
  assert counts == {"tp": 1.0, "fp": 1.0, "fn": 1.0, "tn": 1.0}
  assert masks.mean_iou(counts) == {"smoothed": 1 / 3, "rough": 1 / 3, "mean_iou": 1 / 3}
  assert masks.add_counts(counts, counts)["tp"] == 2.0
  # a constant mask scores 0 on the class it never predicts
  assert masks.mean_iou(masks.confusion(np.ones_like(truth), truth))["rough"] == 0.0


def test_local_std_equals_the_std_of_each_window():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(1, 12, 15))
  got = masks.local_std(image, window=5)
  padded = np.pad(image[0], 2, mode="reflect")
  for y, x in ((0, 0), (5, 7), (11, 14), (3, 13)):
    assert got[0, y, x] == pytest.approx(padded[y:y + 5, x:x + 5].std(), rel=1e-9)


def test_otsu_splits_two_clusters():
  values = np.concatenate([np.full(100, 1.0), np.full(50, 5.0)])
  assert 1.0 <= masks.otsu_threshold(values) < 5.0


def test_local_std_filter_finds_the_quiet_half():
  rng = np.random.default_rng(2)
  image = np.concatenate([rng.normal(0, 0.2, (40, 20)), rng.normal(0, 2.0, (40, 20))], axis=1)[None]
  truth = np.concatenate([np.ones((40, 20)), np.zeros((40, 20))], axis=1)[None]
  assert masks.mean_iou(masks.confusion(masks.local_std_masks(image), truth))["mean_iou"] > 0.8
