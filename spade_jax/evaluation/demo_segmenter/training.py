"""Training the demo segmenter on the real demo images (the protocol's `PROTOCOL`), cached per data set, and its
real-image ceiling."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from spade_jax.data import demo as demo_data
from spade_jax.evaluation.demo_segmenter.data import (
  check_demo_data,
  data_fingerprint,
  fingerprint_id,
  load_split,
  root_of,
)
from spade_jax.evaluation.demo_segmenter.segmenter import DemoSegmenter, meta_path
from spade_jax.evaluation.metrics import ConfusionMatrix
from spade_jax.models.segnet import ARCH_VERSION, NUM_CLASSES, SegNet, init_variables

DEFAULT_STEPS = 800
DEFAULT_BATCH_SIZE = 8
LEARNING_RATE = 3e-3

PROTOCOL = (
    f"demo segmenter (spade_jax.evaluation.demo_segmenter, {ARCH_VERSION}): a compact Flax U-Net (~173k "
    "parameters; RGB + row coordinate, 2x2 space-to-depth, 3x3 conv/GroupNorm/ReLU encoder 32-48-64 channels down "
    "to 1/8 resolution with a global-context vector, bilinear-upsampling decoder with skips, depth-to-space 7-class "
    "logits at the input resolution) trained from scratch ONLY on the real training images and labels of the demo "
    f"data set (softmax cross-entropy, Adam lr {LEARNING_RATE:g} cosine decay, batch {DEFAULT_BATCH_SIZE}, "
    f"{DEFAULT_STEPS} steps by default, random horizontal flips, seed 0). Images are read through the data "
    "pipeline and segmented at the generated resolution (64x64 for configs/demo.py); labels as given (7 classes: "
    f"{', '.join(demo_data.CLASS_NAMES)}; none ignored). Scores come from one dataset-level confusion matrix "
    "(mIoU over classes present in ground truth or prediction, pixel accuracy). The same segmenter's score on the "
    "REAL validation images is the ceiling: a synthesis indistinguishable from real photos to this segmenter would "
    "score it; synthesised-image scores are comparable to that ceiling, not to other segmenters' scores.")


def _default_log(msg: str) -> None:
  """Progress through absl, as train.py / eval.py log: visible at their default verbosity."""
  logging.info("%s", msg)


def _warn(log, msg: str) -> None:
  logging.warning("%s", msg)
  if log is not _default_log:
    log("WARNING: " + msg)


def train_demo_segmenter(data_cfg, *, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                         seed: int = 0, learning_rate: float = LEARNING_RATE,
                         log: Callable[[str], None] | None = None, log_every_secs: float = 10.0,
                         data: tuple[np.ndarray, np.ndarray] | None = None) -> DemoSegmenter:
  """Trains a `SegNet` on the REAL training images/labels of the demo data set `data_cfg` (see `PROTOCOL`).

  The whole training split is held in memory; each step draws `batch_size` random images (with replacement
  across steps, without within a step) and flips each with probability 1/2 inside the jitted step, so the run
  is deterministic given `seed`. `log` (default: absl logging at INFO) gets progress lines (step, loss, elapsed,
  ETA) about every `log_every_secs` seconds. `data` overrides the loaded (images, labels) (tests).
  """
  log = log or _default_log
  if steps <= 0 or batch_size <= 0:
    raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
  t0 = time.time()
  images, labels = load_split(data_cfg, "train") if data is None else data
  n = len(images)
  batch_size = min(batch_size, n)
  log(f"demo segmenter: training on {n} real training images {images.shape[1]}x{images.shape[2]} "
      f"({steps} steps, batch {batch_size}, seed {seed}); data read in {time.time() - t0:.1f}s")

  model = SegNet(num_classes=NUM_CLASSES)
  key_init, key_data = jax.random.split(jax.random.PRNGKey(seed))
  variables = init_variables(model, key_init)
  schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
  tx = optax.adam(schedule)
  opt_state = tx.init(variables)
  images_d, labels_d = jnp.asarray(images), jnp.asarray(labels)

  @jax.jit
  def train_step(variables, opt_state, step, all_images, all_labels, key_data):
    k_idx, k_flip = jax.random.split(jax.random.fold_in(key_data, step))
    idx = jax.random.choice(k_idx, n, (batch_size,), replace=False)
    x, y = all_images[idx], all_labels[idx]
    flip = jax.random.bernoulli(k_flip, 0.5, (batch_size, 1, 1))
    x = jnp.where(flip[..., None], x[:, :, ::-1], x)
    y = jnp.where(flip, y[:, :, ::-1], y)

    def loss_fn(v):
      logits = model.apply(v, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt_state = tx.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state, loss

  t_train = time.time()
  t_first = None  # end of the first step (which includes compilation): the ETA uses the steps after it
  last_log, window, final_loss = t_train, [], float("nan")
  for step in range(steps):
    variables, opt_state, loss = train_step(variables, opt_state, jnp.int32(step), images_d, labels_d, key_data)
    window.append(float(loss))  # also waits for the step, so the times below are real
    now = time.time()
    if t_first is None:
      t_first = now
    if step == 0 or step == steps - 1 or now - last_log >= log_every_secs:
      final_loss = float(np.mean(window))
      elapsed = now - t_train
      eta = f"{(now - t_first) / step * (steps - step - 1):.1f}s" if step > 0 else "? (step 1 includes compiling)"
      log(f"demo segmenter: step {step + 1}/{steps} loss {final_loss:.4f} (mean of the last {len(window)}) "
          f"elapsed {elapsed:.1f}s ETA {eta}")
      last_log, window = now, []
  variables = jax.device_get(variables)
  seconds = time.time() - t0
  log(f"demo segmenter: trained in {seconds:.1f}s")
  meta = {"train_seconds": round(seconds, 2), "steps": int(steps), "batch_size": int(batch_size), "seed": int(seed),
          "num_train_images": int(n), "resolution": [int(images.shape[1]), int(images.shape[2])],
          "final_loss": round(final_loss, 5), "protocol": PROTOCOL}
  return DemoSegmenter(variables, metadata=meta)


def default_cache_path(data_cfg, fingerprint: dict[str, Any]) -> Path:
  """``{root}/segmenter/demo_segmenter_<fingerprint id>.msgpack`` (metadata beside it, ``….msgpack.json``)."""
  return Path(root_of(data_cfg)) / "segmenter" / f"demo_segmenter_{fingerprint_id(fingerprint)}.msgpack"


def _fallback_cache_path(fingerprint: dict[str, Any]) -> Path:
  from spade_jax.weights.download import cache_dir
  return cache_dir() / "demo_segmenter" / f"demo_segmenter_{fingerprint_id(fingerprint)}.msgpack"


def load_or_train(data_cfg, cache_path=None, *, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                  seed: int = 0, log: Callable[[str], None] | None = None) -> tuple[DemoSegmenter, dict[str, Any]]:
  """The cached segmenter for `data_cfg` (trained on its real training images on first use).

  `cache_path` (default `default_cache_path`: under the data root, or the weights cache dir
  (`spade_jax.weights.download.cache_dir()/demo_segmenter`) when the root is not writable) names the msgpack file;
  its metadata must carry the same `data_fingerprint`, else (and when it is corrupt) it is ignored with a
  warning, and the segmenter is retrained and saved there. Returns (segmenter, info) with info keys 'loaded'
  (bool), 'cache_path', 'fingerprint', 'fingerprint_id', 'train_seconds' (None when loaded), 'cache_warning'.
  """
  log = log or _default_log
  check_demo_data(data_cfg, ("train",))
  fp = data_fingerprint(data_cfg, steps=steps, batch_size=batch_size, seed=seed)
  if cache_path is not None:
    candidates = [Path(cache_path)]
  else:
    candidates = [default_cache_path(data_cfg, fp), _fallback_cache_path(fp)]
  info: dict[str, Any] = {"loaded": False, "cache_path": None, "fingerprint": fp, "fingerprint_id": fingerprint_id(fp),
                          "train_seconds": None, "cache_warning": None}
  for path in candidates:
    if not (path.exists() or meta_path(path).exists()):
      continue
    try:
      seg = DemoSegmenter.load(path, expect_fingerprint=fp)
    except ValueError as e:
      info["cache_warning"] = f"ignoring the demo segmenter cache: {e}; retraining"
      _warn(log, info["cache_warning"])
      continue
    info.update(loaded=True, cache_path=str(path))
    log(f"demo segmenter: loaded {path} (fingerprint {info['fingerprint_id']}, no training)")
    return seg, info

  seg = train_demo_segmenter(data_cfg, steps=steps, batch_size=batch_size, seed=seed, log=log)
  seg.metadata["fingerprint"] = fp
  info["train_seconds"] = seg.metadata.get("train_seconds")
  for path in candidates:
    try:
      seg.save(path)
    except OSError as e:
      _warn(log, f"cannot write the demo segmenter cache {path} ({type(e).__name__}: {e})")
      continue
    info["cache_path"] = str(path)
    log(f"demo segmenter: saved {path}")
    break
  return seg, info


def real_ceiling(segmenter: DemoSegmenter, data_cfg, split: str = "val", *, num_images: int = 0) -> dict:
  """`metrics.scores_from_confusion` of `segmenter` on the REAL images of `split` against their labels (the
  ceiling for the scores of synthesised images); `num_images` > 0 limits it to the first N (file order)."""
  images, labels = load_split(data_cfg, split, num_images)
  cm = ConfusionMatrix(segmenter.num_classes)
  cm.update(labels, segmenter.segment(images))
  return cm.scores()
