"""Metric writer, sample grids and progress lines for training, without TensorFlow.

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


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8, truncating like the official tensor2im (float32 math, so PNGs match bit for bit)."""
  x = np.asarray(images, np.float32)
  return np.clip((x + 1) / 2.0 * 255.0, 0, 255).astype(np.uint8)


def image_grid(rows, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """rows: list of uint8 [N, H, W, 3]; each row's images side by side, rows stacked, `pad` pixels between.
  Rows with fewer images are filled with `pad_value` on the right."""
  rows = [np.asarray(r) for r in rows]
  h, w, c = rows[0].shape[1:]
  if any(r.shape[1:] != (h, w, c) for r in rows):
    raise ValueError(f"all images must share one [H, W, C]; got {[r.shape for r in rows]}")
  ncol = max(len(r) for r in rows)
  grid = np.full((len(rows) * (h + pad) - pad, ncol * (w + pad) - pad, c), pad_value, np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      grid[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = img
  return grid


def sample_grid(label_rgb, fake, real=None, pad: int = 2) -> np.ndarray:
  """One row per sample: label colours | synthesis | real (real optional). fake/real may be uint8 or [-1, 1]
  floats (converted with `to_uint8`)."""
  cols = [np.asarray(label_rgb)] + [np.asarray(x) for x in (fake, real) if x is not None]
  cols = [x if x.dtype == np.uint8 else to_uint8(x) for x in cols]
  return image_grid([np.stack([c[i] for c in cols]) for i in range(len(cols[0]))], pad=pad)


def _fmt_duration(s: float) -> str:
  s = int(round(s))
  d, s = divmod(s, 86400)
  h, s = divmod(s, 3600)
  m, s = divmod(s, 60)
  if d:
    return f"{d}d{h:02d}h"
  if h:
    return f"{h}h{m:02d}m"
  return f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
  """Steps/s, images/s and ETA, logged at most every `every_secs`.

  The first `update` only starts the clock: that step includes XLA compilation, which would wreck the ETA. After
  that the rate is an exponential moving average over time (time constant `smoothing_secs`), so it follows real
  changes (e.g. eval pauses) without jumping on every step. Host time is measured, so with async dispatch the rate
  is only meaningful over many steps (it converges once the dispatch queue is full).
  """

  def __init__(self, total_steps: int, *, start_step: int = 0, every_secs: float = 60.0,
               smoothing_secs: float = 60.0, clock=time.monotonic):
    self.total_steps = int(total_steps)
    self.every_secs = every_secs
    self.smoothing_secs = smoothing_secs
    self._clock = clock
    self._last = None            # (step, time) of the previous update
    self._last_log = None
    self.step = int(start_step)
    self.rate = None             # steps/s, None until two updates were seen
    self.images_per_step = None

  @property
  def eta_seconds(self) -> float | None:
    if not self.rate:
      return None
    return max(self.total_steps - self.step, 0) / self.rate

  def line(self) -> str:
    pct = 100.0 * self.step / max(self.total_steps, 1)
    parts = [f"step {self.step}/{self.total_steps} ({pct:.1f}%)"]
    if self.rate is None:
      parts.append("measuring speed")
    else:
      parts.append(f"{self.rate:.1f} steps/s")
      if self.images_per_step:
        parts.append(f"{self.rate * self.images_per_step:.1f} img/s")
      parts.append(f"ETA {_fmt_duration(self.eta_seconds)}")
    return " | ".join(parts)

  def update(self, step: int, images_per_step: int | None = None) -> str | None:
    """Record that `step` is done; returns the line when it was logged, else None."""
    now = self._clock()
    step = int(step)
    if images_per_step is not None:
      self.images_per_step = images_per_step
    if self._last is not None and step > self._last[0] and now > self._last[1]:
      dt = now - self._last[1]
      inst = (step - self._last[0]) / dt
      if self.rate is None:
        self.rate = inst
      else:
        w = math.exp(-dt / self.smoothing_secs)
        self.rate = w * self.rate + (1 - w) * inst
    self._last = (step, now)
    self.step = step
    due = self._last_log is None or now - self._last_log >= self.every_secs or step >= self.total_steps
    if self.rate is None or not due:
      return None
    self._last_log = now
    text = self.line()
    logging.info("%s", text)
    return text
