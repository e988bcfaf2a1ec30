"""Segmentation scores from one dataset-level confusion matrix (fyu/drn `fast_hist` convention).

hist[g, p] counts pixels with ground truth g and prediction p over the whole dataset; ground-truth pixels outside
[0, num_classes) (e.g. the ignore label 255) are dropped. IoU_c = hist[c,c] / (row_c + col_c - hist[c,c]);
a class absent from both ground truth and prediction has IoU 0/0 = NaN and is excluded from the mean (np.nanmean,
as DRN's segment.py). A class predicted but absent from the ground truth has IoU 0 and counts.
Pixel accuracy = trace(hist) / hist.sum() over valid pixels.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ConfusionMatrix", "confusion_matrix", "scores_from_confusion"]


def confusion_matrix(gt, pred, num_classes: int) -> np.ndarray:
  """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction; invalid gt ignored."""
  gt = np.asarray(gt).astype(np.int64).ravel()
  pred = np.asarray(pred).astype(np.int64).ravel()
  if gt.shape != pred.shape:
    raise ValueError(f"ground truth and prediction differ in size: {gt.shape} vs {pred.shape}")
  k = (gt >= 0) & (gt < num_classes)
  bad = k & ((pred < 0) | (pred >= num_classes))
  if bad.any():
    raise ValueError(f"predictions outside [0, {num_classes}) at valid pixels: {np.unique(pred[bad])[:8]}")
  return np.bincount(num_classes * gt[k] + pred[k], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores_from_confusion(hist) -> dict:
  """{'miou', 'pixel_accuracy', 'mean_accuracy', 'per_class_iou' (NaN = absent), 'num_pixels', 'num_classes_scored'}."""
  hist = np.asarray(hist, np.float64)
  tp = np.diag(hist)
  union = hist.sum(1) + hist.sum(0) - tp
  gt_count = hist.sum(1)
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    acc_c = np.where(gt_count > 0, tp / np.where(gt_count > 0, gt_count, 1), np.nan)
  total = hist.sum()
  scored = ~np.isnan(iou)
  return {
      "miou": float(np.mean(iou[scored])) if scored.any() else float("nan"),
      "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
      "mean_accuracy": float(np.nanmean(acc_c)) if (gt_count > 0).any() else float("nan"),
      "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
      "num_pixels": int(total),
      "num_classes_scored": int(scored.sum()),
  }


class ConfusionMatrix:
  """Accumulate over a dataset: `update(gt, pred)` per batch, then `scores()`."""

  def __init__(self, num_classes: int):
    self.num_classes = int(num_classes)
    self.hist = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, gt, pred) -> None:
    self.hist += confusion_matrix(gt, pred, self.num_classes)

  def scores(self) -> dict:
    return scores_from_confusion(self.hist)
