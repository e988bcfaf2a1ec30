"""MetricWriter (JSONL + TensorBoard events without TensorFlow), image grids, to_uint8 and Progress."""
import io
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from spade_jax.images import image_grid, sample_grid, to_uint8
from spade_jax.progress import Progress
from spade_jax.writer import MetricWriter, read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _strict_json(line):
  def no_constants(name):
    raise AssertionError(f"non-standard JSON constant {name}")
  return json.loads(line, parse_constant=no_constants)


def test_scalars_jsonl_nonfinite_and_resume(tmp_path):
  with MetricWriter(tmp_path) as w:
    w.write_scalars(1, {"loss_g": np.float32(1.5), "loss_d": 2})
    w.write_scalars(2, {"loss_g": float("nan"), "grad": float("inf"), "neg": -float("inf")})
  with MetricWriter(tmp_path) as w:                 # resume: appends to the same file
    w.write_scalars(3, {"loss_g": 0.25})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  rows = [_strict_json(l) for l in lines]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert rows[0]["loss_g"] == 1.5 and rows[0]["loss_d"] == 2.0 and isinstance(rows[0]["loss_d"], float)
  assert (rows[1]["loss_g"], rows[1]["grad"], rows[1]["neg"]) == ("nan", "inf", "-inf")
  assert all(isinstance(r["time"], float) for r in rows)
  back = read_metrics(tmp_path)
  assert math.isnan(back[1]["loss_g"]) and back[1]["grad"] == math.inf and back[1]["neg"] == -math.inf
  assert back[2] == {"step": 3, "time": rows[2]["time"], "loss_g": 0.25}
  assert len(list((tmp_path / "tb").iterdir())) == 2  # one event file per run


def test_read_metrics_skips_torn_line(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
  assert read_metrics(tmp_path) == [{"step": 1, "a": 1.0}]
  assert read_metrics(tmp_path / "missing") == []


def test_tensorboard_roundtrip(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  img = np.zeros((6, 8, 3), np.uint8)
  img[:, :4] = (255, 0, 0)
  batch = np.stack([img, 255 - img])
  with MetricWriter(tmp_path) as w:
    w.write_scalars(10, {"loss/g": 1.0})
    w.write_scalars(20, {"loss/g": 0.5})
    w.write_images(20, {"samples": img, "train/batch": batch})
    w.write_text(0, {"config": "lr: 2e-4"})
  acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
  acc.Reload()
  assert [(s.step, s.value) for s in acc.Scalars("loss/g")] == [(10, 1.0), (20, 0.5)]
  (ev,) = acc.Images("samples")
  assert (ev.step, ev.height, ev.width) == (20, 6, 8)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(ev.encoded_image_string))), img)
  (ev,) = acc.Images("train/batch")
  assert (ev.height, ev.width) == (6, 2 * 8 + 2)         # a batch is tiled side by side
  (t,) = acc.Tensors("config")
  assert t.tensor_proto.string_val == [b"lr: 2e-4"]
  png = tmp_path / "images" / "samples_00000020.png"
  np.testing.assert_array_equal(np.asarray(Image.open(png)), img)
  assert (tmp_path / "images" / "train_batch_00000020.png").exists()


def test_rejects_float_images(tmp_path):
  with MetricWriter(tmp_path) as w, pytest.raises(TypeError, match="to_uint8"):
    w.write_images(0, {"x": np.zeros((4, 4, 3), np.float32)})


def test_disabled_writer_is_a_noop(tmp_path):
  logdir = tmp_path / "run"
  with MetricWriter(logdir, enabled=False) as w:
    w.write_scalars(0, {"a": 1.0})
    w.write_images(0, {"x": np.zeros((4, 4, 3), np.uint8)})
    w.write_text(0, {"t": "x"})
    w.flush()
  assert not logdir.exists()


def test_no_tensorflow_import(tmp_path):
  code = textwrap.dedent(f"""
      import sys
      sys.modules["tensorflow"] = None   # any `import tensorflow` now raises ImportError
      import numpy as np
      from spade_jax.writer import MetricWriter
      with MetricWriter({str(tmp_path)!r}) as w:
        w.write_scalars(1, {{"a": 1.0}})
        w.write_images(1, {{"x": np.zeros((4, 4, 3), np.uint8)}})
        w.write_text(1, {{"t": "hi"}})
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
  assert len(os.listdir(tmp_path / "tb")) == 1


def test_to_uint8_truncates_like_tensor2im():
  x = np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0], np.float32)
  np.testing.assert_array_equal(to_uint8(x), [0, 0, 127, 254, 255, 255])  # 127.5 -> 127, not 128


def test_image_grid_layout():
  a = np.full((2, 3, 4, 3), 10, np.uint8)
  b = np.full((1, 3, 4, 3), 20, np.uint8)
  g = image_grid([a, b], pad=1, pad_value=0)
  assert g.shape == (2 * 3 + 1, 2 * 4 + 1, 3)
  assert (g[:3, :4] == 10).all() and (g[:3, 5:] == 10).all() and (g[4:, :4] == 20).all()
  assert (g[3] == 0).all() and (g[:, 4] == 0).all() and (g[4:, 5:] == 0).all()


def test_sample_grid_columns():
  label = np.full((2, 4, 5, 3), 7, np.uint8)
  fake = np.full((2, 4, 5, 3), 1.0, np.float32)     # floats in [-1, 1] are converted
  real = np.zeros((2, 4, 5, 3), np.uint8)
  g = sample_grid(label, fake, real)
  assert g.shape == (2 * 4 + 2, 3 * 5 + 4, 3) and g.dtype == np.uint8
  assert (g[:4, :5] == 7).all() and (g[:4, 7:12] == 255).all() and (g[6:, 14:] == 0).all()
  assert sample_grid(label, fake).shape == (10, 12, 3)


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_progress_excludes_compile_step_and_reports_eta():
  clock = _Clock()
  p = Progress(50000, every_secs=30, clock=clock)
  clock.t = 100.0                                  # first step: slow (compilation)
  assert p.update(1, images_per_step=32) is None and p.rate is None and p.eta_seconds is None
  for s in range(2, 202):
    clock.t += 0.5                                 # then 2 steps/s, steady
    p.update(s)
  assert p.rate == pytest.approx(2.0)
  assert p.eta_seconds == pytest.approx((50000 - 201) / 2.0)
  line = p.line()
  assert re.fullmatch(r"step 201/50000 \(0\.4%\) \| 2\.0 steps/s \| 64\.0 img/s \| ETA 6h55m", line), line


def test_progress_logging_interval_and_smoothing():
  clock = _Clock()
  p = Progress(100, start_step=10, every_secs=10, smoothing_secs=5, clock=clock)
  assert p.update(11) is None
  clock.t = 1.0
  assert p.update(12) is not None                  # first line once a rate exists
  clock.t = 2.0
  assert p.update(13) is None                      # within every_secs
  for s in range(14, 60):                          # slows down to 0.5 steps/s: the average follows
    clock.t += 2.0
    p.update(s)
  assert p.rate == pytest.approx(0.5, rel=1e-3)
  clock.t += 2.0
  assert p.update(100).startswith("step 100/100 (100.0%)")  # the last step always logs
