"""The demo data set as the segmenter reads it: checks, the decoded split, and the fingerprint its cache is keyed by."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from spade_jax.data import demo as demo_data
from spade_jax.models.segnet import ARCH_VERSION, CLASS_NAMES, NUM_CLASSES


def root_of(data_cfg) -> str:
  return str(data_cfg.root or "")


def check_demo_data(data_cfg, splits=("train",)) -> None:
  """Raises ValueError (naming the root and what is expected) unless `data_cfg` is a demo-style data set."""
  from spade_jax.data.sources import custom_dirs
  root = root_of(data_cfg)
  expected = (f"a demo-style data set (spade_jax.data.demo: dataset='custom', label_nc={NUM_CLASSES} classes "
              f"{', '.join(CLASS_NAMES)}, folders {{root}}/{{train,val}}/{{images,labels}})")
  if str(data_cfg.dataset) != "custom":
    raise ValueError(f"demo segmenter: data set {data_cfg.dataset!r} at root {root!r} is not {expected}.")
  if int(data_cfg.label_nc) != NUM_CLASSES:
    raise ValueError(f"demo segmenter: data set at root {root!r} has label_nc={data_cfg.label_nc}, but "
                     f"{expected} is needed.")
  for split in splits:
    image_dir, label_dir, _ = custom_dirs(data_cfg, split)
    for d in (image_dir, label_dir):
      if not d or not os.path.isdir(d):
        raise ValueError(f"demo segmenter: folder {d or '(unset)'} of split {split!r} does not exist (root "
                         f"{root!r}); expected {expected}. Generate it with `python -m spade_jax.data.demo "
                         f"--out=ROOT` (or config.data.demo_generate=True).")
  marker = demo_data.read_marker(root) if root else None
  if marker:
    classes = marker["params"].get("classes")
    if classes is not None and tuple(classes) != CLASS_NAMES:
      raise ValueError(f"demo segmenter: data set at root {root!r} has classes {classes}; expected {expected}.")


def load_split(data_cfg, split: str = "train", num_images: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N,H,W,3), labels int32 (N,H,W)) of `split`, decoded as the evaluation pipeline does.

  File order, no flip, crop/resize per config.data (e.g. 64x64 for the demo config), label ids validated.
  """
  from spade_jax.data import TransformOptions
  from spade_jax.data.decode import load_sample
  from spade_jax.data.errors import DataError
  from spade_jax.data.sources import build_source
  check_demo_data(data_cfg, (split,))
  try:
    source = build_source(data_cfg, split)
  except DataError as e:
    raise ValueError(f"demo segmenter: cannot read split {split!r} of root {root_of(data_cfg)!r}: {e}") from e
  n = min(len(source), num_images) if num_images else len(source)
  opts = TransformOptions.from_config(data_cfg, train=False)
  images, labels = [], []
  for i in range(n):
    s = load_sample(source[i], opts, np.random.default_rng([0, i]))
    images.append(np.rint((s["image"] + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
    labels.append(s["label"].astype(np.int32))
  return np.stack(images), np.stack(labels)


def data_fingerprint(data_cfg, *, steps: int, batch_size: int, seed: int) -> dict[str, Any]:
  """What the cached weights depend on: data set identity and sizes, training settings, architecture version."""
  from spade_jax.data.sources import custom_dirs
  image_dir, label_dir, _ = custom_dirs(data_cfg, "train")
  files, counts = [], []
  for d in (image_dir, label_dir):
    listed = [p for p in sorted(Path(d).iterdir()) if p.is_file() and not p.name.startswith(".")]
    files += [f"{p.parent.name}/{p.name}:{p.stat().st_size}" for p in listed]
    counts.append(len(listed))
  root = root_of(data_cfg)
  marker = demo_data.read_marker(root) if root else None
  generator = marker["params"] if marker else None
  return {
      "arch": ARCH_VERSION,
      "root": str(Path(root).absolute()) if root else "",
      "image_dir": str(Path(image_dir).absolute()), "label_dir": str(Path(label_dir).absolute()),
      "label_nc": int(data_cfg.label_nc),
      "preprocess": str(data_cfg.preprocess), "load_size": int(data_cfg.load_size),
      "crop_size": int(data_cfg.crop_size), "aspect_ratio": float(data_cfg.aspect_ratio),
      "max_dataset_size": int(data_cfg.max_dataset_size or 0),
      "num_train_images": counts[0], "num_train_labels": counts[1],
      "files_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(),
      "generator": generator,
      "steps": int(steps), "batch_size": int(batch_size), "seed": int(seed),
  }


def fingerprint_id(fp: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
