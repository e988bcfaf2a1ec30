"""A trained demo segmenter: `segment` images, `save` and `load` its weights with checksummed metadata."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from spade_jax.models import count_params
from spade_jax.models.segnet import (
  ARCH_VERSION,
  CLASS_NAMES,
  NUM_CLASSES,
  SegNet,
  variables_template,
)

_SEGMENT_CHUNK = 64  # images per jitted segmentation call (smaller ones are padded to a power of two)


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
    _atomic_write(meta_path(path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    self.metadata = meta
    return path

  @classmethod
  def load(cls, path, *, expect_fingerprint: dict[str, Any] | None = None) -> DemoSegmenter:
    """Reads a `save`d segmenter; raises ValueError when the files are corrupt, of another architecture, or (with
    `expect_fingerprint`) trained on another data set / with other settings."""
    path = Path(path)
    meta_file = meta_path(path)
    try:
      meta = json.loads(meta_file.read_text())
      data = path.read_bytes()
    except (OSError, ValueError) as e:
      raise ValueError(f"demo segmenter cache {path}: cannot read weights/metadata ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
      raise ValueError(f"demo segmenter cache {meta_file}: metadata is not a JSON object")
    if meta.get("arch") != ARCH_VERSION:
      raise ValueError(f"demo segmenter cache {path}: architecture {meta.get('arch')!r}, expected {ARCH_VERSION!r}")
    if hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
      raise ValueError(f"demo segmenter cache {path}: weights do not match the checksum in {meta_file} (corrupt or "
                       "partially written)")
    if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
      diff = sorted(k for k in set(expect_fingerprint) | set(meta.get("fingerprint") or {})
                    if (meta.get("fingerprint") or {}).get(k) != expect_fingerprint.get(k))
      raise ValueError(f"demo segmenter cache {path} was trained on another data set or with other settings "
                       f"(differs in: {', '.join(diff) or 'fingerprint'})")
    num_classes = int(meta.get("num_classes", NUM_CLASSES))
    template = variables_template(SegNet(num_classes=num_classes))
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


def meta_path(path: Path) -> Path:
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
