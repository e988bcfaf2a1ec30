"""eval.py end to end on a 1-step demo checkpoint: JSON report, grid, TensorBoard scalars, cached real statistics.

The Inception weights are random (torch, pytorch-fid's layout, saved with torch.save): the FID value is
meaningless, the plumbing is what is tested."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.training.tiny import DEMO_RECIPE_OFF

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def _env(tmp_path):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true", PYTHONPATH=str(REPO),
             SPADE_JAX_CACHE=str(tmp_path / "cache"))
  env.pop("XLA_FLAGS", None)
  return env


def test_eval_py_on_demo_checkpoint(tmp_path):
  from tests.evaluation.torch_refs import TorchFIDInception, randomize
  torch.manual_seed(0)
  weights = tmp_path / "pt_inception-random.pth"
  torch.save(randomize(TorchFIDInception()).state_dict(), weights)
  ov = {"data.root": tmp_path / "data", "data.crop_size": 32, "data.load_size": 32, "data.demo_num_train": 8,
        "data.demo_num_val": 5, "model.ngf": 4, "model.ndf": 4, "model.n_layers_D": 2, "train.batch_size": 8,
        "train.num_steps": 1,
        "train.checkpoint_every": 1, "train.sample_every": 1000, "eval.every_steps": 0, "eval.num_images": 4,
        "eval.batch_size": 2, **DEMO_RECIPE_OFF}  # this test is about evaluation
  subprocess.run([sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'demo.py'}",
                  f"--workdir={tmp_path / 'run'}"] + [f"--config.{k}={v}" for k, v in ov.items()],
                 env=_env(tmp_path), check=True, capture_output=True, timeout=600)
  r = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--workdir={tmp_path / 'run'}",
                      f"--inception_weights={weights}", "--fid", "--demo_segmenter_steps=30"],  # the rest: the run's
                     env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "ETA" in r.stderr and "eval at step 1" in r.stderr and "FID " in r.stderr
  out = tmp_path / "run" / "eval" / "step_1"
  report = json.loads((out / "report.json").read_text())
  assert report["data"]["num_images"] == 4 and report["data"]["resolution"] == [32, 32]
  assert np.isfinite(report["fid"]) and report["fid"] > 0
  assert report["fid_protocol"]["meaningful"] and not report["fid_protocol"]["real_stats_from_cache"]
  seg = report["segmentation"]  # the demo segmenter, trained on the real demo images, with its real-image ceiling
  assert seg["network"].startswith("demo segmenter") and set(seg["per_class_iou"]) == {
      "sky", "cloud", "mountain", "water", "sand", "grass", "tree"}
  assert 0 <= seg["miou"] <= 1 and 0 < seg["real_images"]["pixel_accuracy"] <= 1
  assert report["checkpoint"]["weights"] == "live"
  from PIL import Image
  assert Image.open(out / "grid.png").size == (3 * 32 + 2 * 2, 4 * 32 + 3 * 2)  # label | fake | real, 4 rows
  assert any(f.name.startswith("events.out.tfevents") for f in (out / "logs" / "tb").iterdir())
  assert json.loads((out / "logs" / "metrics.jsonl").read_text().splitlines()[0])["eval/fid"] == report["fid"]
  cache = report["fid_protocol"]["real_stats_cache"]
  assert cache.startswith(str(tmp_path / "cache")) and os.path.isfile(cache)

  # second run: the real statistics come from the cache; the FID is unchanged (the same batch size as the run's
  # config: the Inception's program comes from the compilation cache)
  r2 = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--workdir={tmp_path / 'run'}",
                       f"--inception_weights={weights}", "--fid", "--batch_size=2", f"--out={tmp_path / 'again'}",
                       "--segmenter=none"],
                      env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert r2.returncode == 0, r2.stderr[-3000:]
  report2 = json.loads((tmp_path / "again" / "report.json").read_text())
  assert report2["fid_protocol"]["real_stats_from_cache"]
  assert report2["fid"] == pytest.approx(report["fid"], rel=1e-4)
  assert report2["segmentation"] is None and "segmentation_skipped" in report2


def _write_cityscapes(root, split, n, h=32, w=64, seed=0):
  from PIL import Image
  rng = np.random.default_rng(seed)
  for i in range(n):
    key = f"aachen_000000_{i:06d}"
    img_dir, gt = root / "leftImg8bit" / split / "aachen", root / "gtFine" / split / "aachen"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_dir / f"{key}_leftImg8bit.png")
    ids = rng.choice(np.array([0, 7, 8, 11, 21, 23, 26, 33], np.uint8), (h // 8, w // 8)).repeat(8, 0).repeat(8, 1)
    Image.fromarray(ids).save(gt / f"{key}_gtFine_labelIds.png")
    Image.fromarray(ids.astype(np.uint16) * 1000).save(gt / f"{key}_gtFine_instanceIds.png")


def test_eval_py_cityscapes_segmentation_with_drn(tmp_path):
  from tests.evaluation.torch_refs import TorchDRNSeg, TorchFIDInception, randomize
  torch.manual_seed(0)
  inc, drn = tmp_path / "inception.pth", tmp_path / "drn-d-105.pth"
  torch.save(randomize(TorchFIDInception()).state_dict(), inc)
  torch.save(randomize(TorchDRNSeg(19), residual_scale=0.3).state_dict(), drn)
  for split, n in (("train", 2), ("val", 3)):
    _write_cityscapes(tmp_path / "city", split, n, seed=len(split))
  ov = {"data.root": tmp_path / "city", "data.crop_size": 64, "data.load_size": 64,
        "model.num_upsampling_layers": "normal", "model.ngf": 4, "model.ndf": 4, "model.n_layers_D": 2,
        "train.batch_size": 2, "train.num_steps": 1, "train.checkpoint_every": 1, "train.sample_every": 1000,
        "loss.lambda_vgg": 0.0}
  subprocess.run([sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'cityscapes.py'}",
                  f"--workdir={tmp_path / 'run'}"] + [f"--config.{k}={v}" for k, v in ov.items()],
                 env=_env(tmp_path), check=True, capture_output=True, timeout=600)
  r = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--workdir={tmp_path / 'run'}",
                      f"--inception_weights={inc}", f"--segmenter_weights={drn}", "--batch_size=2"],
                     env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "eval" / "step_1" / "report.json").read_text())
  assert report["data"]["resolution"] == [32, 64] and report["data"]["num_images"] == 3
  seg = report["segmentation"]
  assert 0 <= seg["miou"] <= 1 and 0 <= seg["pixel_accuracy"] <= 1 and len(seg["per_class_iou"]) == 19
  assert seg["network"] == "DRN-D-105" and "road" in seg["per_class_iou"]
  assert 0 <= seg["real_images"]["pixel_accuracy"] <= 1
  assert report["fid_protocol"]["meaningful"]

  # Without DRN weights the Cityscapes segmentation score cannot be computed: the error says what to pass.
  r = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--workdir={tmp_path / 'run'}",
                      f"--inception_weights={inc}"], env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert r.returncode != 0 and "drn-d-105_ms_cityscapes.pth" in r.stderr and "--segmenter=none" in r.stderr
