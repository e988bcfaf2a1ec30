"""train.py and eval.py as multi-host jobs: N processes on this machine through jax.distributed (python -m
spade_jax.launch), against one process with as many devices.

Bit-exact comparisons use 2 processes x 1 device against 1 process x 2 devices, with single-threaded Eigen: a sum
of two numbers does not depend on its order, while XLA:CPU's in-process all-reduce and gloo's sum three or more
device partials in different orders, and Eigen splits its work by the size of a process's thread pool. One run
uses 2 processes x 2 devices (several devices per process)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from spade_jax import checkpoints
from spade_jax.training import checkpointer as ckpt_lib
from spade_jax.writer import read_metrics
from tests.conftest import REPO
from tests.training.test_train_e2e import _env as _train_env
from tests.training.test_train_e2e import _overrides as _train_overrides

pytestmark = pytest.mark.slow

STEPS = 6
HEARTBEAT = 5  # seconds: a process that stops sending heartbeats counts as dead after this long


def _overrides(data, **changes):
  """The tiny demo run of the single-process end-to-end tests, smaller still to compile (no VAE, one small D, no
  spectral norm: on several processes each one compiles every program itself, see the README)."""
  ov = _train_overrides(data, STEPS, every=1)
  ov.update({"model.use_vae": False, "model.num_D": 1, "model.n_layers_D": 2, "model.spectral_G": False,
             "model.spectral_D": False, "train.keep_checkpoints": 10,
             "train.sample_every": 2, "eval.every_steps": 2, "eval.num_images": 4, "eval.demo_segmenter_steps": 20})
  ov.update({k.replace("__", "."): v for k, v in changes.items()})
  return ov


def _env():
  # spade_jax.launch turns the persistent compilation cache off for its multi-process runs: with it, this module run
  # in order hung in the resume test's first step (jax 0.12.1; alone, or with the cache off, it passes)
  return dict(_train_env(), XLA_FLAGS="--xla_cpu_multi_thread_eigen=false")


def _launch(processes, devices, script, args, grace=60):
  return [sys.executable, "-m", "spade_jax.launch", f"--processes={processes}", f"--devices_per_process={devices}",
          f"--heartbeat_timeout={HEARTBEAT}", f"--grace={grace}", "--", str(REPO / script), *args]


def _train_args(workdir, overrides):
  return [f"--config={REPO / 'configs' / 'demo.py'}", f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in overrides.items()]]


def _run(cmd):
  out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return out.stderr


def _start(cmd, log):
  """A launcher in the background, its output in `log`; returns it with the pids of its processes."""
  proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=open(log, "w"))
  deadline, pids = time.time() + 120, {}
  while len(pids) < 2 and time.time() < deadline and proc.poll() is None:
    pids = {int(i): int(p) for i, p in re.findall(r"\[launch\] process (\d+): pid (\d+)", log.read_text())}
    time.sleep(0.05)
  assert len(pids) == 2, log.read_text()[-3000:]
  return proc, pids


def _wait_for(path, proc, timeout=300):
  deadline = time.time() + timeout
  while not path.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert path.exists(), f"{path} never appeared"


def _state(workdir, step=None):
  return checkpoints.restore_subtrees(checkpoints.checkpoint_dir(workdir), keys=("step", "g", "d", "opt_g", "opt_d"),
                                   step=step)


def _assert_same_state(a, b, step=None):
  la, lb = jax.tree.leaves(_state(a, step)), jax.tree.leaves(_state(b, step))
  assert len(la) == len(lb)
  assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)), (a, b, step)


def _assert_same_losses(a, b, steps):
  want = {m["step"]: m for m in read_metrics(str(a)) if "G_total" in m}
  got = {m["step"]: m for m in read_metrics(str(b)) if "G_total" in m}
  for s in steps:
    for k in ("G_total", "D_total", "G_GAN", "G_GAN_Feat", "D_real", "D_Fake"):
      assert got[s][k] == want[s][k], (s, k, got[s][k], want[s][k])


def _report(workdir, step):
  report = json.loads((workdir / "eval" / f"step_{step}" / "report.json").read_text())
  report.pop("seconds")
  return report


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One process x 2 devices, uninterrupted: a checkpoint every step, samples and an evaluation every 2 steps."""
  root = tmp_path_factory.mktemp("multihost")
  data, work = root / "data", root / "one"
  _run(_launch(1, 2, "train.py", _train_args(work, _overrides(data))))
  assert ckpt_lib.Checkpointer(checkpoints.checkpoint_dir(work)).all_steps() == list(range(1, STEPS + 1))
  return root, data, work


def test_two_processes_train_as_one_and_sigterm_on_one_saves_both(reference):
  root, data, one = reference
  work, log = root / "two", root / "two.log"
  overrides = _overrides(data, train__checkpoint_every=2)
  proc, pids = _start(_launch(2, 1, "train.py", _train_args(work, overrides)), log)
  _wait_for(work / "eval" / "step_2" / "report.json", proc)
  os.kill(pids[1], signal.SIGTERM)  # preemption notice on one host only
  assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
  text = log.read_text()
  saved = {int(p): int(s) for p, s in re.findall(r"\[p(\d)\].*preemption signal: saved step (\d+), exiting", text)}
  assert set(saved) == {0, 1} and saved[0] == saved[1] < STEPS, saved  # both stopped, at the same step
  stop = saved[0]
  assert "[launch] process 0 finished: exit status 0" in text and "[launch] process 1 finished: exit status 0" in text
  # Equal to the one-process run: every checkpoint, every loss, the sample grid, the periodic evaluation.
  for s in (2, stop):
    _assert_same_state(one, work, s)
  _assert_same_losses(one, work, range(1, stop + 1))
  grid = "images/samples_00000002.png"
  assert (work / grid).read_bytes() == (one / grid).read_bytes()
  assert _report(work, 2) == _report(one, 2)
  assert len(list((work / "tb").iterdir())) == 1  # metrics written once (process 0)

  # The 2-process checkpoint resumes in one process and ends as the uninterrupted run did.
  err = _run(_launch(1, 2, "train.py", _train_args(work, overrides)))
  assert f"resumed from step {stop}" in err and "another number of processes" in err
  _assert_same_state(one, work)
  _assert_same_losses(one, work, range(stop + 1, STEPS + 1))


def test_one_process_checkpoint_resumes_in_two_and_sigkill_stops_the_other(reference):
  root, data, one = reference
  work, log = root / "killed", root / "killed.log"
  shutil.copytree(one / "checkpoints" / "2", work / "checkpoints" / "2")  # written by one process
  overrides = _overrides(data, train__checkpoint_every=2, train__sample_every=1000, eval__every_steps=0)
  proc, pids = _start(_launch(2, 1, "train.py", _train_args(work, overrides)), log)
  _wait_for(work / "checkpoints" / "4", proc)
  killed = time.time()
  os.kill(pids[1], signal.SIGKILL)
  rc = proc.wait(timeout=300)
  elapsed = time.time() - killed
  text = log.read_text()
  assert rc != 0 and "[launch] process 0 finished: exit status 1" in text, text[-4000:]  # stopped by itself ...
  assert elapsed < HEARTBEAT + 30, elapsed  # ... within the bound
  named = re.search(r"\[p0\] spade_jax: process 0 stopped because a peer process is gone .*The last complete "
                    r"checkpoint is step (\d+) in (\S+);", text)
  assert named, text[-4000:]
  last = int(named.group(1))
  assert named.group(2) == f"{work}/checkpoints" and last >= 4
  # Nothing corrupted: every complete checkpoint reads back; the ones written by two processes after resuming
  # from the one-process checkpoint equal the uninterrupted run's.
  steps = ckpt_lib.Checkpointer(checkpoints.checkpoint_dir(work)).all_steps()
  assert max(steps) == last
  for s in steps:
    _assert_same_state(one, work, s)

  # Restarting resumes from the checkpoint the message named and ends as the uninterrupted run did.
  err = _run(_launch(1, 2, "train.py", _train_args(work, overrides)))
  assert f"resumed from step {last}" in err
  _assert_same_state(one, work)


def test_eval_py_on_two_processes(reference):
  root, data, one = reference
  out = root / "eval2"
  _run(_launch(2, 2, "eval.py", [f"--workdir={one}", f"--out={out}", "--num_images=4", "--batch_size=2",
                                 "--demo_segmenter_steps=20", "--nofid"]))
  report = json.loads((out / "report.json").read_text())
  report.pop("seconds"), report.pop("checkpoint")
  assert report == _report(one, STEPS)  # the same as the run's own evaluation of its last step
  assert len(list((out / "logs" / "tb").iterdir())) == 1  # written once
