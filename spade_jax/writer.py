"""Metric writer for training runs and evaluations, without TensorFlow.

clu.metric_writers imports TensorFlow (docs/jax_stack.md §6), so we write the two formats ourselves:
  * `metrics.jsonl`: one JSON object per `write_scalars` call; easy to read in a notebook (`read_metrics`);
  * TensorBoard event files in `tb/`, built from tensorboard's protos and its record framing, which need only
    `tensorboard` + `protobuf` (no TF, no background thread).
Images are also saved as PNGs under `images/` so samples can be looked at without TensorBoard.
"""
from __future__ import annotations

import io
import json
import math
import os
import socket
import time

import numpy as np
from absl import logging
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from spade_jax.images import image_grid

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _json_float(v: float):
  """JSON has no NaN/Infinity; write them as strings so every line stays valid JSON."""
  if math.isfinite(v):
    return v
  return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def _as_uint8_image(name: str, x) -> np.ndarray:
  """uint8 [H, W, 3] or [N, H, W, 3] (a batch is tiled side by side) -> uint8 [H, W, 3]."""
  x = np.asarray(x)
  if x.dtype != np.uint8:
    raise TypeError(f"image {name!r} has dtype {x.dtype}; convert with to_uint8() first")
  if x.ndim == 4:
    x = image_grid([x])
  if x.ndim != 3 or x.shape[-1] != 3:
    raise ValueError(f"image {name!r} must be [H, W, 3] or [N, H, W, 3], got shape {x.shape}")
  return x


class MetricWriter:
  """Scalars -> metrics.jsonl + TensorBoard; images -> TensorBoard + PNG; text -> TensorBoard + log.

  Pass `enabled=jax.process_index() == 0`: on other hosts every call is a no-op and nothing is created.
  metrics.jsonl is opened in append mode, so a resumed run continues the same file (steps after the restored
  checkpoint may then appear twice); each run gets a new event file in tb/, which TensorBoard merges.
  """

  def __init__(self, logdir: str, *, enabled: bool = True, log_scalars: bool = True):
    self.logdir = os.fspath(logdir)
    self.enabled = enabled
    self.log_scalars = log_scalars
    self._jsonl = self._tb = None
    if not enabled:
      return
    os.makedirs(os.path.join(self.logdir, "tb"), exist_ok=True)
    os.makedirs(os.path.join(self.logdir, "images"), exist_ok=True)
    self._jsonl = open(os.path.join(self.logdir, "metrics.jsonl"), "a", encoding="utf-8")
    # TensorBoard only reads files whose name contains "tfevents"; this is the usual naming scheme.
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{id(self)}"
    self._tb = RecordWriter(open(os.path.join(self.logdir, "tb", name), "wb"))
    self._add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _add_event(self, event) -> None:
    self._tb.write(event.SerializeToString())

  def _add_summary(self, step: int, values) -> None:
    self._add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))
    self._tb.flush()

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    step = int(step)
    vals = {k: float(v) for k, v in scalars.items()}   # also pulls jax/numpy scalars to the host
    row = {"step": step, "time": time.time(), **{k: _json_float(v) for k, v in vals.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    self._add_summary(step, [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in vals.items()])
    if self.log_scalars:
      logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in vals.items()))

  def write_images(self, step: int, images: dict) -> None:
    if not self.enabled:
      return
    step = int(step)
    values = []
    for name, x in images.items():
      img = _as_uint8_image(name, x)
      png = _png(img)
      with open(os.path.join(self.logdir, "images", f"{name.replace('/', '_')}_{step:08d}.png"), "wb") as f:
        f.write(png)
      values.append(summary_pb2.Summary.Value(tag=name, image=summary_pb2.Summary.Image(
          height=img.shape[0], width=img.shape[1], colorspace=3, encoded_image_string=png)))
    self._add_summary(step, values)

  def write_text(self, step: int, texts: dict) -> None:
    """Text for TensorBoard's text plugin (markdown), e.g. the config; also logged."""
    if not self.enabled:
      return
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
    values = []
    for name, text in texts.items():
      tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[str(text).encode("utf-8")],
                                      tensor_shape=tensor_shape_pb2.TensorShapeProto())
      values.append(summary_pb2.Summary.Value(tag=name, metadata=meta, tensor=tensor))
      logging.info("[%d] %s: %s", int(step), name, text)
    self._add_summary(step, values)

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._tb.close()
      self._jsonl = self._tb = None
      self.enabled = False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_metrics(logdir: str) -> list[dict]:
  """All rows of logdir/metrics.jsonl in file order, with "nan"/"inf" strings turned back into floats. A torn last
  line (a crash mid-write) is skipped."""
  path = os.path.join(os.fspath(logdir), "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      rows.append({k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()})
  return rows
