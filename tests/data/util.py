"""Shared helpers for the data tests: a config.data builder and tiny fixture writers."""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from spade_jax import config as spade_config

COCO_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco_stuff_sample"


def make_cfg(**overrides) -> ml_collections.ConfigDict:
  """A config.data with every schema field (spade_jax.config), set for a tiny custom data set, in-process loading."""
  cfg = spade_config.defaults().data.to_dict()
  cfg.update(dataset="custom", root="", image_dir="", label_dir="", instance_dir="", tfds_name="",
             tfds_data_dir="", label_nc=7, contain_dontcare_label=False, no_instance=True,
             preprocess="resize_and_crop", load_size=36, crop_size=32, aspect_ratio=1.0, no_flip=False,
             on_bad_sample="error", workers=0, prefetch=2, max_dataset_size=0)
  unknown = set(overrides) - set(cfg)
  assert not unknown, unknown
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def save(path: Path, array: np.ndarray) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_custom(root: Path, n: int, *, h: int = 24, w: int = 30, label_nc: int = 7, instances: bool = False,
                 seed: int = 0) -> Path:
  """root/{images,labels[,instances]}/NAME.png with random content; returns root."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    save(root / "images" / f"im{i}.png", rgb(rng, h, w))
    save(root / "labels" / f"im{i}.png", rng.integers(0, label_nc, (h, w), dtype=np.uint8))
    if instances:
      save(root / "instances" / f"im{i}.png", rng.integers(0, 5, (h, w), dtype=np.uint8))
  return root
