"""Style scores of the demo's VAE synthesis: does a synthesis take its style image's style, and do random codes
give every style?

The demo data set (spade_jax.data.demo) renders each photo in one of three global styles, day / sunset / night,
and records it in ``{root}/{split}/styles.json`` (file stem -> style). Its styles differ in colour by construction
(the generator's palettes), so a documented colour rule judges them; no network is trained for it:

* features: the mean RGB (0..255) of the sky-region pixels (classes sky and cloud of the label map the image
  was made from) and the mean RGB of the other pixels; 6 numbers (a region absent from a map takes the whole
  image's mean). The label map, not a segmentation, picks the pixels, so the judge sees colour only.
* classifier: nearest centroid (Euclidean) among the three style centroids, each the mean feature of the REAL
  training images of that style (read through the data pipeline at the evaluated resolution).
* ceiling: the same rule's accuracy on the REAL validation images, reported beside the synthesis scores.

Scores (`StyleScores`): style accuracy = the share of validation images whose synthesis, made from the image's
own label map with the encoder's mean code of the image itself (z = mu), is judged to be the image's recorded
style; random-code shares = how the judged styles of syntheses with z ~ N(0, I) (the evaluation's per-image
codes, several per label map) split over the three styles (a VAE that ignores part of its prior, or collapses
two styles, shows up here as a share near 0).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spade_jax.data import demo as demo_data

__all__ = ["STYLES", "STYLES_FILE", "PROTOCOL", "features", "StyleJudge", "StyleScores", "read_styles",
           "build_judge"]

STYLES = tuple(demo_data.STYLES)
STYLES_FILE = demo_data.STYLES_FILE
SKY_CLASSES = (demo_data.SKY, demo_data.CLOUD)

PROTOCOL = (
    "style judge (spade_jax.evaluation.style): features = mean RGB (0..255) of the sky and cloud pixels of the "
    "label map the image was made from, and mean RGB of its other pixels (6 numbers; a missing region takes the "
    "whole image's mean); nearest centroid (Euclidean) among day / sunset / night, each centroid the mean feature "
    "of the REAL training images of that style (styles from {root}/train/styles.json, images through the data "
    "pipeline at the evaluated resolution). Style accuracy: each validation label map synthesised with the "
    "encoder's mean code (z = mu) of its own photo; correct when the synthesis is judged the photo's recorded "
    "style (styles.json of the val split). Random-code shares: the judged styles of syntheses with z ~ N(0, I) "
    "(per image i and round r the evaluation's code fold_in(key(0), i + r * num_images)). The same rule on the "
    "REAL validation images is the ceiling.")


def features(images, labels) -> np.ndarray:
  """uint8 (N, H, W, 3) images and their (N, H, W) label maps -> float64 (N, 6): sky-region and other mean RGB."""
  images = np.asarray(images, np.float64)
  labels = np.asarray(labels)
  if images.ndim != 4 or images.shape[-1] != 3 or labels.shape != images.shape[:3]:
    raise ValueError(f"style features need images (N, H, W, 3) and labels (N, H, W), got {images.shape} and "
                     f"{labels.shape}")
  sky = np.isin(labels, SKY_CLASSES)[..., None]
  whole = images.mean((1, 2))

  def region_mean(mask):
    n = mask.sum((1, 2))
    return np.where(n > 0, (images * mask).sum((1, 2)) / np.maximum(n, 1), whole)

  return np.concatenate([region_mean(sky), region_mean(~sky)], -1)


class StyleJudge:
  """Nearest-centroid style classifier on `features`; a style with no training image has no centroid (never
  predicted)."""

  def __init__(self, centroids, counts=None, names=STYLES):
    self.centroids = np.asarray(centroids, np.float64)  # (num_styles, 6), NaN rows for absent styles
    self.names = tuple(names)
    self.counts = [int(c) for c in (counts if counts is not None else [1] * len(self.names))]

  @classmethod
  def fit(cls, images, labels, styles, names=STYLES) -> StyleJudge:
    f, styles = features(images, labels), np.asarray(styles)
    cents = np.full((len(names), f.shape[1]), np.nan)
    counts = np.bincount(styles, minlength=len(names))
    for k in range(len(names)):
      if counts[k]:
        cents[k] = f[styles == k].mean(0)
    if not np.isfinite(cents).any():
      raise ValueError("style judge: no training images")
    return cls(cents, counts, names)

  def classify(self, images, labels) -> np.ndarray:
    """int (N,) style indices (into `names`)."""
    d = ((features(images, labels)[:, None, :] - self.centroids[None]) ** 2).sum(-1)
    return np.argmin(np.where(np.isnan(d), np.inf, d), 1)

  def describe(self) -> dict:
    return {name: {"train_images": n, "centroid_rgb": {"sky": None if np.isnan(c[0]) else [round(v, 1) for v in c[:3]],
                                                       "other": None if np.isnan(c[0])
                                                       else [round(v, 1) for v in c[3:]]}}
            for name, n, c in zip(self.names, self.counts, self.centroids.tolist())}


class StyleScores:
  """Accumulates judged styles over an evaluation: guided (true style known), random codes, real images."""

  def __init__(self, names=STYLES):
    self.names = tuple(names)
    k = len(self.names)
    self.guided = np.zeros((k, k), np.int64)  # [true, judged]
    self.real = np.zeros((k, k), np.int64)
    self.random = np.zeros(k, np.int64)
    self.sky_rgb = {"guided": [[] for _ in range(k)], "real": [[] for _ in range(k)]}  # per true style

  def update_guided(self, true, judged, feats=None) -> None:
    np.add.at(self.guided, (np.asarray(true), np.asarray(judged)), 1)
    if feats is not None:
      for t, f in zip(np.asarray(true), np.asarray(feats)):
        self.sky_rgb["guided"][t].append(f[:3])

  def update_real(self, true, judged, feats=None) -> None:
    np.add.at(self.real, (np.asarray(true), np.asarray(judged)), 1)
    if feats is not None:
      for t, f in zip(np.asarray(true), np.asarray(feats)):
        self.sky_rgb["real"][t].append(f[:3])

  def update_random(self, judged) -> None:
    self.random += np.bincount(np.asarray(judged), minlength=len(self.names))

  @staticmethod
  def _accuracy(cm):
    n = int(cm.sum())
    return float(np.trace(cm) / n) if n else None

  def _per_style(self, cm):
    return {name: (float(cm[k, k] / cm[k].sum()) if cm[k].sum() else None) for k, name in enumerate(self.names)}

  def _mean_sky(self, which):
    return {name: ([round(float(v), 1) for v in np.mean(rows, 0)] if rows else None)
            for name, rows in zip(self.names, self.sky_rgb[which])}

  def scores(self) -> dict:
    n_random = int(self.random.sum())
    return {
        "accuracy": self._accuracy(self.guided),
        "per_style_accuracy": self._per_style(self.guided),
        "confusion": {"rows": "recorded style of the photo", "columns": "judged style of its synthesis",
                      "styles": list(self.names), "counts": self.guided.tolist()},
        "num_images": int(self.guided.sum()),
        "random_code_shares": {name: (float(c / n_random) if n_random else None)
                               for name, c in zip(self.names, self.random)},
        "random_code_counts": dict(zip(self.names, self.random.tolist())),
        "num_random_samples": n_random,
        # sqrt(p (1 - p) / n): how far a share may be from the model's own by the draw of codes alone (128 codes:
        # up to 0.044); two shares further apart than about twice that differ by more than the draw
        "random_code_share_stderr": {name: (float(np.sqrt(c / n_random * (1 - c / n_random) / n_random))
                                            if n_random else None) for name, c in zip(self.names, self.random)},
        "mean_sky_rgb": {"synthesis_with_own_style": self._mean_sky("guided"), "real": self._mean_sky("real"),
                         "meaning": "mean RGB of the sky and cloud pixels per recorded style of the photo"},
        "real_images": {"accuracy": self._accuracy(self.real), "per_style_accuracy": self._per_style(self.real),
                        "meaning": "the same rule on the real validation images: the ceiling"},
    }


def read_styles(data_cfg, split: str) -> np.ndarray:
  """The recorded style index of every record of `split`, in the data pipeline's order (from styles.json).

  Raises ValueError naming the file when the data set has no style record (not made by spade_jax.data.demo, or
  by a version before styles were recorded) or a file is missing from it."""
  from spade_jax.data.sources import build_source, custom_dirs
  image_dir = custom_dirs(data_cfg, split)[0]
  path = Path(image_dir).parent / STYLES_FILE
  try:
    table = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"style scores need the demo's style record {path} ({type(e).__name__}: {e}); regenerate "
                     "the data set with spade_jax.data.demo") from e
  out = []
  for rec in build_source(data_cfg, split).records:
    key = Path(rec["image"]).stem
    if table.get(key) not in STYLES:
      raise ValueError(f"{path} has no valid style for {key!r} (got {table.get(key)!r}; styles {STYLES})")
    out.append(STYLES.index(table[key]))
  return np.asarray(out, np.int64)


def build_judge(data_cfg) -> StyleJudge:
  """The judge fitted on the REAL training images of the demo data set `data_cfg` (see the module docstring)."""
  from spade_jax.evaluation.demo_segmenter import load_split
  styles = read_styles(data_cfg, "train")
  images, labels = load_split(data_cfg, "train")
  return StyleJudge.fit(images, labels, styles)
