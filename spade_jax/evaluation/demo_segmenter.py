"""A small segmenter for the procedural demo "landscapes" data set (spade_jax.data.demo), trained on real images.

No pretrained segmentation network exists for the demo data set, so its segmentation score (mIoU, pixel accuracy
of synthesised images against the label maps they were synthesised from) uses this network instead. Protocol:

* Training data: only the REAL training split (``{root}/train/{images,labels}``), read through the data
  pipeline's decoding (`spade_jax.data.decode.load_sample`) in evaluation mode, i.e. at the generated resolution
  (``crop_size``; 64x64 for ``configs/demo.py``), labels as given (7 classes: sky, cloud, mountain, water, sand,
  grass, tree; no ignore label). Augmentation: random horizontal flips. Validation images are never seen.
* Network (`SegNet`, `ARCH_VERSION`): a compact U-Net in Flax (NHWC, ~173 k parameters). Input: uint8 RGB
  scaled to [-1, 1] plus a row-coordinate channel, folded 2x2 space-to-depth to half resolution; encoder of 3x3
  conv + GroupNorm + ReLU blocks, 32 channels at 1/2, 48 at 1/4, 64 at 1/8 (strided-conv downsampling, one
  dilated conv) with a global-context vector (image mean of the 1/8 features: the day / sunset / night style);
  decoder: bilinear x2 upsampling with concatenated skips and 3x3 convs (32, 24 channels), then per
  half-resolution pixel a 1x1 conv to 2x2x7 logits, unfolded depth-to-space to 7-class logits at the input
  resolution.
* Training: from scratch, softmax cross-entropy, optax Adam (lr 3e-3, cosine decay), batch 8, `DEFAULT_STEPS`
  (800) steps, i.e. 12.5 epochs of the 512 default training images, about 40-50 s on a 2-core CPU; deterministic
  given the seed. (Real-val scores reached on the default demo set: ~0.97 pixel accuracy, ~0.89 mIoU.)
* Evaluation: argmax of the logits at the generated resolution; one dataset-level confusion matrix
  (`spade_jax.evaluation.metrics`) gives mIoU and pixel accuracy. `real_ceiling` is the same score on the REAL
  validation images: the ceiling a synthesis could reach if it were indistinguishable from real photos to this
  segmenter (scores of synthesised images are comparable to it, not to scores of other segmenters/data sets).

The trained weights are cached (`load_or_train`) as a flax msgpack file plus JSON metadata keyed by a fingerprint
of the data set (root, sizes, file names/sizes, generator parameters), the training seed and steps and the
architecture version, so evaluating twice does not retrain; a cache that is corrupt or belongs to another data set
is ignored with a warning and replaced.

    seg, info = load_or_train(config.data, log=print)
    pred = seg.segment(images_uint8_nhwc)            # int32 (N, H, W) class ids
    ceiling = real_ceiling(seg, config.data)          # {'miou', 'pixel_accuracy', ...} on real val images
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from spade_jax.data import demo as demo_data
from spade_jax.evaluation.metrics import ConfusionMatrix
from spade_jax.models import count_params

__all__ = ["SegNet", "DemoSegmenter", "train_demo_segmenter", "load_or_train", "real_ceiling", "load_split",
           "check_demo_data", "data_fingerprint", "default_cache_path", "PROTOCOL", "ARCH_VERSION",
           "DEFAULT_STEPS", "DEFAULT_BATCH_SIZE", "NUM_CLASSES", "CLASS_NAMES"]

NUM_CLASSES = demo_data.NUM_CLASSES
CLASS_NAMES = tuple(demo_data.CLASS_NAMES)
ARCH_VERSION = "demo-unet-s2d-v1"
DEFAULT_STEPS = 800
DEFAULT_BATCH_SIZE = 8
LEARNING_RATE = 3e-3
_SEGMENT_CHUNK = 64  # images per jitted segmentation call (smaller ones are padded to a power of two)

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


# ---------------------------------------------------------------------------------------------------------
# Network


def _conv_block(x, features, *, stride=1, dilation=1, name):
  x = nn.Conv(features, (3, 3), strides=(stride, stride), kernel_dilation=(dilation, dilation), padding="SAME",
              use_bias=False, name=f"{name}_conv")(x)
  x = nn.GroupNorm(num_groups=min(8, max(1, features // 4)), name=f"{name}_gn")(x)
  return nn.relu(x)


def _upsample_to(x, like):
  return jax.image.resize(x, (x.shape[0],) + like.shape[1:3] + (x.shape[-1],), "bilinear")


class SegNet(nn.Module):
  """Compact U-Net: uint8 (or [0, 1] float) NHWC RGB -> (N, H, W, num_classes) float32 logits; any H, W.

  The input (RGB in [-1, 1] plus a row-coordinate channel in [-1, 1]) is folded 2x2 space-to-depth to half
  resolution (odd sizes are edge-padded). Encoder (3x3 conv + GroupNorm + ReLU): two convs of `widths[0]` at 1/2,
  a stride-2 conv and a conv of `widths[1]` at 1/4, a stride-2 conv and a dilated (2) conv of `widths[2]` at 1/8,
  then global context (the spatial mean through a dense layer, broadcast, concatenated and fused by a 1x1 conv +
  GroupNorm + ReLU: day / sunset / night is a property of the whole image). Decoder: bilinear x2 upsampling,
  concatenation with the encoder skip and a 3x3 conv per level (`decoder` widths at 1/4 and 1/2), then a 1x1 conv
  to 4 * num_classes logits per half-resolution pixel, unfolded depth-to-space to full-resolution logits.
  """
  num_classes: int = NUM_CLASSES
  widths: tuple[int, ...] = (32, 48, 64)
  decoder: tuple[int, ...] = (32, 24)

  @nn.compact
  def __call__(self, images):
    x = jnp.asarray(images)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    n, h, w, _ = x.shape
    rows = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, h, dtype=jnp.float32)[None, :, None, None], (n, h, w, 1))
    x = jnp.concatenate([x * 2.0 - 1.0, rows], -1)
    hp, wp = h + h % 2, w + w % 2
    if (hp, wp) != (h, w):
      x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    c = x.shape[-1]
    x = x.reshape(n, hp // 2, 2, wp // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // 2, wp // 2, 4 * c)
    w1, w2, w3 = self.widths
    e1 = _conv_block(_conv_block(x, w1, name="enc1a"), w1, name="enc1b")              # 1/2
    e2 = _conv_block(_conv_block(e1, w2, stride=2, name="enc2a"), w2, name="enc2b")   # 1/4
    e3 = _conv_block(_conv_block(e2, w3, stride=2, name="enc3a"), w3, dilation=2, name="enc3b")  # 1/8
    g = nn.relu(nn.Dense(w3, name="context")(e3.mean((1, 2))))
    e3 = jnp.concatenate([e3, jnp.broadcast_to(g[:, None, None, :], e3.shape)], -1)
    e3 = nn.Conv(w3, (1, 1), use_bias=False, name="fuse_conv")(e3)
    e3 = nn.relu(nn.GroupNorm(num_groups=8, name="fuse_gn")(e3))
    d2 = _conv_block(jnp.concatenate([_upsample_to(e3, e2), e2], -1), self.decoder[0], name="dec2")
    d1 = _conv_block(jnp.concatenate([_upsample_to(d2, e1), e1], -1), self.decoder[1], name="dec1")
    k = self.num_classes
    out = nn.Conv(4 * k, (1, 1), name="head")(d1)
    out = out.reshape(n, hp // 2, wp // 2, 2, 2, k).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, k)
    return out[:, :h, :w].astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# Data


def _root(data_cfg) -> str:
  return str(data_cfg.root or "")


def check_demo_data(data_cfg, splits=("train",)) -> None:
  """Raises ValueError (naming the root and what is expected) unless `data_cfg` is a demo-style data set."""
  from spade_jax.data.sources import custom_dirs
  root = _root(data_cfg)
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
    raise ValueError(f"demo segmenter: cannot read split {split!r} of root {_root(data_cfg)!r}: {e}") from e
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
  root = _root(data_cfg)
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


def _fingerprint_id(fp: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# The segmenter


@functools.cache
def _predict_fn(num_classes: int):
  """One jitted argmax-apply per class count, shared by all segmenters (compiled once per input shape)."""
  model = SegNet(num_classes=num_classes)
  return jax.jit(lambda variables, x: jnp.argmax(model.apply(variables, x), -1).astype(jnp.int32))


class DemoSegmenter:
  """A trained `SegNet` plus metadata. `segment(uint8 NHWC) -> int32 (N, H, W)` class ids."""

  def __init__(self, variables, *, metadata: dict[str, Any] | None = None, num_classes: int = NUM_CLASSES,
               class_names=CLASS_NAMES):
    self.model = SegNet(num_classes=num_classes)
    self.variables = variables
    self.num_classes = int(num_classes)
    self.class_names = tuple(class_names)
    self.metadata = dict(metadata or {})
    self._predict = _predict_fn(self.num_classes)

  @property
  def num_params(self) -> int:
    return count_params(self.variables)

  def logits(self, images) -> np.ndarray:
    """float32 (N, H, W, num_classes) logits (un-chunked; for inspection)."""
    return np.asarray(self.model.apply(self.variables, jnp.asarray(images)))

  def segment(self, images, batch_size: int = _SEGMENT_CHUNK) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3) (or one (H, W, 3)) -> int32 class ids (N, H, W) (or (H, W))."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise TypeError(f"DemoSegmenter.segment expects uint8 RGB images (0..255), got dtype {images.dtype}")
    single = images.ndim == 3
    if single:
      images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"DemoSegmenter.segment expects (N, H, W, 3) images, got shape {images.shape}")
    n = len(images)
    out = []
    for start in range(0, n, batch_size):
      chunk = images[start:start + batch_size]
      k = len(chunk)
      padded = min(batch_size, max(8, 1 << (k - 1).bit_length()))  # few compiled shapes: 8, 16, 32, ..., chunk
      if padded > k:
        chunk = np.concatenate([chunk, np.zeros((padded - k,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(self._predict(self.variables, chunk))[:k])
    result = np.concatenate(out) if out else np.zeros(images.shape[:3], np.int32)
    return result[0] if single else result

  def save(self, path) -> Path:
    """Writes `path` (flax msgpack of the variables) and `path`.json (metadata + sha256), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = flax.serialization.to_bytes(jax.device_get(self.variables))
    meta = dict(self.metadata, arch=ARCH_VERSION, num_classes=self.num_classes, class_names=list(self.class_names),
                weights_sha256=hashlib.sha256(data).hexdigest())
    _atomic_write(path, data)
    _atomic_write(_meta_path(path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    self.metadata = meta
    return path

  @classmethod
  def load(cls, path, *, expect_fingerprint: dict[str, Any] | None = None) -> DemoSegmenter:
    """Reads a `save`d segmenter; raises ValueError when the files are corrupt, of another architecture, or (with
    `expect_fingerprint`) trained on another data set / with other settings."""
    path = Path(path)
    meta_path = _meta_path(path)
    try:
      meta = json.loads(meta_path.read_text())
      data = path.read_bytes()
    except (OSError, ValueError) as e:
      raise ValueError(f"demo segmenter cache {path}: cannot read weights/metadata ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
      raise ValueError(f"demo segmenter cache {meta_path}: metadata is not a JSON object")
    if meta.get("arch") != ARCH_VERSION:
      raise ValueError(f"demo segmenter cache {path}: architecture {meta.get('arch')!r}, expected {ARCH_VERSION!r}")
    if hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
      raise ValueError(f"demo segmenter cache {path}: weights do not match the checksum in {meta_path} (corrupt or "
                       "partially written)")
    if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
      diff = sorted(k for k in set(expect_fingerprint) | set(meta.get("fingerprint") or {})
                    if (meta.get("fingerprint") or {}).get(k) != expect_fingerprint.get(k))
      raise ValueError(f"demo segmenter cache {path} was trained on another data set or with other settings "
                       f"(differs in: {', '.join(diff) or 'fingerprint'})")
    num_classes = int(meta.get("num_classes", NUM_CLASSES))
    template = _variables_template(SegNet(num_classes=num_classes))
    try:
      variables = flax.serialization.from_bytes(template, data)
    except Exception as e:  # msgpack / structure errors
      raise ValueError(f"demo segmenter cache {path}: cannot decode weights ({type(e).__name__}: {e})") from e
    try:
      bad = [jax.tree_util.keystr(k) for k, (a, b) in _zip_leaves(template, variables)
             if a.shape != np.shape(b) or a.dtype != np.asarray(b).dtype]
    except ValueError as e:
      raise ValueError(f"demo segmenter cache {path}: {e}") from e
    if bad:
      raise ValueError(f"demo segmenter cache {path}: parameter shapes differ from {ARCH_VERSION} at {bad[:3]}")
    return cls(variables, metadata=meta, num_classes=num_classes,
               class_names=tuple(meta.get("class_names", CLASS_NAMES)))


def _zip_leaves(a, b):
  la = jax.tree_util.tree_leaves_with_path(a)
  lb = jax.tree_util.tree_leaves(b)
  if len(la) != len(lb):
    raise ValueError("parameter tree structure differs")
  return [(k, (x, y)) for (k, x), y in zip(la, lb)]


def _meta_path(path: Path) -> Path:
  return path.with_name(path.name + ".json")


def _atomic_write(path: Path, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


_INIT_SHAPE = (1, 16, 16, 3)
# XLA's optimising CPU compile of the random initialisers takes ~5 s on 2 cores, unoptimised ~1 s; the values agree
# to ~1e-7, and the same options are used everywhere, so the initialisation is the same in every run.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _init_variables(model: SegNet, key):
  """Freshly initialised variables (Flax default initialisers), from `key`."""
  x = jnp.zeros(_INIT_SHAPE, jnp.uint8)
  return jax.jit(model.init).lower(key, x).compile(compiler_options=_FAST_COMPILE)(key, x)


def _variables_template(model: SegNet):
  """The variables' structure, shapes and dtypes (no computation)."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(_INIT_SHAPE, jnp.uint8))


# ---------------------------------------------------------------------------------------------------------
# Training


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
  variables = _init_variables(model, key_init)
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
  return Path(_root(data_cfg)) / "segmenter" / f"demo_segmenter_{_fingerprint_id(fingerprint)}.msgpack"


def _fallback_cache_path(fingerprint: dict[str, Any]) -> Path:
  from spade_jax.weights.download import cache_dir
  return cache_dir() / "demo_segmenter" / f"demo_segmenter_{_fingerprint_id(fingerprint)}.msgpack"


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
  info: dict[str, Any] = {"loaded": False, "cache_path": None, "fingerprint": fp, "fingerprint_id": _fingerprint_id(fp),
                          "train_seconds": None, "cache_warning": None}
  for path in candidates:
    if not (path.exists() or _meta_path(path).exists()):
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
