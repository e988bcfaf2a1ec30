"""train.py end to end on tiny demo data: exact resume after SIGKILL, preemption (SIGTERM), NaN stop, and a
checkpoint written on 8 devices resuming on one."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs.demo
from spade_jax import checkpoints
from spade_jax.errors import UserError
from spade_jax.training import checkpointer as ckpt_lib
from spade_jax.training import loop
from spade_jax.training import state as state_lib
from spade_jax.writer import read_metrics
from tests.conftest import REPO
from tests.training.tiny import DEMO_RECIPE_OFF

pytestmark = pytest.mark.slow


def _overrides(data, steps, every=2):
  return {"data.root": str(data), "data.crop_size": 32, "data.load_size": 32, "data.demo_num_train": 16,
          "data.demo_num_val": 4, "model.ngf": 4, "model.ndf": 4, "model.n_layers_D": 2, "train.batch_size": 8,
          "train.log_every": 1, "train.sample_every": 1000, "train.checkpoint_every": every, "train.num_steps": steps,
          "train.progress_every_secs": 1.0, "eval.every_steps": 0, "loss.vae_warmup_steps": 8, **DEMO_RECIPE_OFF}


def _train_cmd(workdir, overrides):
  return [sys.executable, str(REPO / "train.py"), "--config=" + str(REPO / "configs" / "demo.py"),
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def _env():
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  return env


def _state(workdir, step=None):
  return checkpoints.restore_subtrees(checkpoints.checkpoint_dir(workdir),
                                      keys=("step", "g", "d", "e", "opt_g", "opt_d"), step=step)


def _assert_trees_identical(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert np.array_equal(np.asarray(x), np.asarray(y)), "resumed run differs from the uninterrupted one"


def test_sigkill_then_resume_is_bit_exact(tmp_path):
  steps, data = 12, tmp_path / "data"
  ov = _overrides(data, steps)
  subprocess.run(_train_cmd(tmp_path / "a", ov), env=_env(), check=True, capture_output=True, timeout=600)

  proc = subprocess.Popen(_train_cmd(tmp_path / "b", ov), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckdir = tmp_path / "b" / "checkpoints"
  deadline = time.time() + 600
  while not (ckdir / "4").is_dir() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
  killed_at = ckpt_lib.Checkpointer(ckdir).latest_step()
  assert killed_at is not None and killed_at < steps

  subprocess.run(_train_cmd(tmp_path / "b", ov), env=_env(), check=True, capture_output=True, timeout=600)
  _assert_trees_identical(_state(tmp_path / "a"), _state(tmp_path / "b"))
  want = {m["step"]: m for m in read_metrics(str(tmp_path / "a"))}
  got = {m["step"]: m for m in read_metrics(str(tmp_path / "b"))}  # the resumed part of b
  for s in range(killed_at + 1, steps + 1):
    for k in ("G_total", "D_total", "G_GAN_Feat", "G_KLD"):
      assert got[s][k] == want[s][k], (s, k)
  # the VAE warm-up (8 steps) follows the state's step through the resume: no KL term at first, then a rising one
  assert want[1]["G_KLD"] == 0.0 and want[steps]["G_KLD"] > 0.0


def _config(data, steps, every=2):
  config = configs.demo.get_config()
  for k, v in _overrides(data, steps, every).items():
    node = config
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return config


def _wrap_step(monkeypatch, on_call):
  """Wrap the jitted step (made by create_train_state) so a test can act at a given call (1-based) without touching
  the loop's code."""
  real = state_lib.make_train_step
  calls = {"n": 0}

  def make(*args, **kwargs):
    step = real(*args, **kwargs)

    def wrapped(*a):
      calls["n"] += 1
      state, metrics = step(*a)
      return state, on_call(calls["n"], metrics)
    return wrapped
  monkeypatch.setattr(state_lib, "make_train_step", make)
  return calls


def test_sigterm_saves_nan_stops_and_8_device_checkpoint_resumes_on_1(tmp_path, monkeypatch):
  assert jax.device_count() == 8
  work, data = tmp_path / "w", tmp_path / "data"

  # Preemption: SIGTERM during step 3 -> a checkpoint at step 3, then a clean exit.
  def sigterm_at_3(n, metrics):
    if n == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return metrics
  _wrap_step(monkeypatch, sigterm_at_3)
  loop.train_and_evaluate(_config(data, steps=10, every=100), str(work))
  assert ckpt_lib.Checkpointer(checkpoints.checkpoint_dir(work)).all_steps() == [3]

  # A NaN loss at step 5 (the 2nd call after resuming at 3): stop, name the step and the last good checkpoint (4).
  _wrap_step(monkeypatch, lambda n, m: {**m, "G_total": jnp.nan} if n == 2 else m)
  with pytest.raises(FloatingPointError, match=r"non-finite loss at step 5: \{'G_total': nan\}.*step 4 in"):
    loop.train_and_evaluate(_config(data, steps=10, every=1), str(work))
  assert ckpt_lib.Checkpointer(checkpoints.checkpoint_dir(work)).all_steps() == [3, 4]
  assert checkpoints.read_config_dir(checkpoints.checkpoint_dir(work))["train"]["batch_size"] == 8

  # The 8-device checkpoint resumes in a 1-device process and trains on.
  out = subprocess.run(_train_cmd(work, _overrides(data, 6)), env=_env(), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from step 4" in out.stderr and "1 devices" in out.stderr
  assert int(_state(work)["step"]) == 6


def test_missing_vgg_weights_say_how_to_disable_the_loss(tmp_path):
  config = configs.demo.get_config()
  config.loss.lambda_vgg, config.loss.perceptual_net = 10.0, "vgg19"
  config.loss.vgg_weights = str(tmp_path / "nowhere.pth")
  with pytest.raises(UserError, match=r"nowhere\.pth[\s\S]*--config\.loss\.lambda_vgg=0"):
    loop._load_vgg(config)


def test_demo_checkpoint_synthesis_api_and_cli(tmp_path, monkeypatch):
  """A trained demo checkpoint (VAE) feeds the notebook API and the synthesis command."""
  from PIL import Image

  import spade_jax
  from spade_jax import synthesize as synth_cli
  work, data = tmp_path / "w", tmp_path / "data"
  config = _config(data, steps=2, every=2)
  # periodic evaluation on the training mesh (8 devices), at step 1 and at the end: the demo segmenter's mIoU
  # (FID goes through the same runner; eval.py's tests cover it, and its Inception costs a minute to compile here)
  config.eval.update(every_steps=1, num_images=3, batch_size=2, demo_segmenter_steps=20)
  loop.train_and_evaluate(config, str(work))
  evals = [m for m in read_metrics(str(work)) if "eval/miou" in m]
  assert [m["step"] for m in evals] == [1, 2]
  assert all(0 <= m["eval/miou"] <= 1 and 0 < m["eval/miou_real"] <= 1 for m in evals)
  report = json.loads((work / "eval" / "step_2" / "report.json").read_text())
  assert report["data"]["num_images"] == 3 and report["segmentation"]["network"].startswith("demo segmenter")
  assert (work / "eval" / "step_1" / "grid.png").is_file() and report["fid"] is None
  labels = sorted((data / "val" / "labels").glob("*.png"))[:2]
  style = sorted((data / "val" / "images").glob("*.png"))[0]
  model = spade_jax.load(str(work))
  maps = [Image.open(p) for p in labels]
  assert model.synthesize(maps).shape == (2, 32, 32, 3) and model.synthesize(maps).dtype == np.uint8
  # After two steps from the official 0.02-gain init the images are nearly flat grey: compare the float outputs.
  a = model.synthesize(maps, seed=0, return_float=True)
  b = model.synthesize(maps, seed=1, return_float=True)
  s = model.synthesize(maps, style=Image.open(style), return_float=True)
  assert np.abs(a - b).max() > 0 and np.abs(a - s).max() > 0  # multimodal and style-guided
  out = synth_cli.main([f"--checkpoint={work}", f"--labels={labels[0].parent}", f"--out={tmp_path / 'out'}",
                        "--samples=2"])
  assert len(out) == 2 * 4 and all(p.exists() for p in out)
