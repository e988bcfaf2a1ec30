"""Confusion-matrix mIoU / pixel accuracy on hand-made cases with known values."""
import numpy as np
import pytest

from spade_jax.evaluation.metrics import ConfusionMatrix, confusion_matrix, scores_from_confusion


def test_perfect_prediction():
  gt = np.array([[0, 1], [2, 2]])
  s = scores_from_confusion(confusion_matrix(gt, gt, 3))
  assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0 and s["num_pixels"] == 4


def test_known_values_with_ignore_label():
  gt = np.array([0, 0, 0, 1, 1, 255, 255, 2])
  pred = np.array([0, 0, 1, 1, 0, 2, 0, 2])  # predictions at ignored pixels do not count
  hist = confusion_matrix(gt, pred, 3)
  np.testing.assert_array_equal(hist, [[2, 1, 0], [1, 1, 0], [0, 0, 1]])
  s = scores_from_confusion(hist)
  # IoU0 = 2 / (3 + 3 - 2) = 1/2, IoU1 = 1 / (2 + 2 - 1) = 1/3, IoU2 = 1 / (1 + 1 - 1) = 1
  np.testing.assert_allclose(s["per_class_iou"], [0.5, 1 / 3, 1.0])
  assert s["miou"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 3)
  assert s["pixel_accuracy"] == pytest.approx(4 / 6)
  assert s["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  assert s["num_pixels"] == 6


def test_absent_classes_excluded_but_false_positives_count():
  # 5 classes: class 3 absent from gt and prediction (excluded); class 4 only predicted (IoU 0, counted)
  gt = np.array([0, 0, 1, 2, 2, 2])
  pred = np.array([0, 4, 1, 2, 2, 0])
  s = scores_from_confusion(confusion_matrix(gt, pred, 5))
  # IoU0 = 1 / (2 + 2 - 1) = 1/3, IoU1 = 1, IoU2 = 2/3, IoU3 = NaN, IoU4 = 0 / (0 + 1 - 0) = 0
  assert s["per_class_iou"][3] is None
  np.testing.assert_allclose([s["per_class_iou"][i] for i in (0, 1, 2, 4)], [1 / 3, 1, 2 / 3, 0])
  assert s["miou"] == pytest.approx((1 / 3 + 1 + 2 / 3 + 0) / 4)
  assert s["num_classes_scored"] == 4
  assert s["pixel_accuracy"] == pytest.approx(4 / 6)


def test_accumulates_over_batches_like_one_dataset_matrix():
  rng = np.random.default_rng(0)
  gt = rng.integers(0, 6, size=(4, 8, 8))
  gt[gt == 5] = 255
  pred = rng.integers(0, 5, size=(4, 8, 8))
  cm = ConfusionMatrix(5)
  for i in range(4):
    cm.update(gt[i], pred[i])
  assert cm.scores() == scores_from_confusion(confusion_matrix(gt, pred, 5))
  # dataset-level, not a mean of per-image scores
  per_image = np.mean([scores_from_confusion(confusion_matrix(gt[i], pred[i], 5))["miou"] for i in range(4)])
  assert cm.scores()["miou"] != pytest.approx(per_image)


def test_all_ignored_and_bad_predictions():
  s = scores_from_confusion(confusion_matrix(np.full(4, 255), np.zeros(4), 3))
  assert np.isnan(s["miou"]) and np.isnan(s["pixel_accuracy"]) and s["num_pixels"] == 0
  with pytest.raises(ValueError, match="outside"):
    confusion_matrix(np.array([0, 1]), np.array([0, 7]), 3)
  confusion_matrix(np.array([255, 1]), np.array([7, 1]), 3)  # out-of-range prediction at an ignored pixel is fine
