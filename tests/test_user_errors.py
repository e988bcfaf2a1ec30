"""Every user mistake ends the command line with one `error:` line naming the bad value or file, exit status 2 and no
traceback; nothing the user made is lost. Table-driven: each case is run the way a user would, as a subprocess (the
cases run concurrently; most stop before JAX compiles anything)."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from spade_jax import checkpoints
from spade_jax import config as spade_config
from spade_jax.data import demo
from spade_jax.errors import EXIT_USER_ERROR
from spade_jax.training import checkpointer as ckpt_lib
from tests.conftest import REPO

TINY = {"model.ngf": 4, "model.ndf": 4, "model.n_layers_D": 2, "model.use_vae": False, "data.load_size": 32,
        "data.crop_size": 32, "data.demo_num_train": 8, "data.demo_num_val": 2, "train.batch_size": 8,
        "train.num_steps": 1, "eval.every_steps": 0, "loss.lambda_vgg": 0.0, "train.ema_decay": 0.0}


def _flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


@dataclasses.dataclass
class Case:
  name: str
  args: list[str]                       # after the interpreter: a script and its flags, or -m module ...
  needles: tuple[str, ...]              # each must appear in the one error line
  env: dict = dataclasses.field(default_factory=dict)
  stderr_has: tuple[str, ...] = ()      # and each of these somewhere in stderr


def _run(case: Case, cwd: Path) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SPADE_VERBOSE")}
  env |= {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "SPADE_JAX_CACHE": str(cwd / "cache"),
          "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",  # offline, whatever the host
          "JAX_DISABLE_MOST_OPTIMIZATIONS": "true", **case.env}
  return subprocess.run([sys.executable, *case.args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _png(path: Path, array) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _custom_data(root: Path, broken: str) -> Path:
  """8 + 2 demo photos in the custom layout, one of them broken in the way `broken` says."""
  src = root.parent / "demo_src"
  if not src.exists():
    demo.generate(src, 8, 2, size=32, seed=0)
  shutil.copytree(src, root, ignore=shutil.ignore_patterns(".spade_demo*"))
  label, image = root / "train" / "labels" / "00003.png", root / "train" / "images" / "00003.png"
  if broken == "label_out_of_range":
    a = np.array(Image.open(label))
    a[0, 0] = 40
    _png(label, a)
  elif broken == "size_differs":
    _png(image, np.zeros((16, 16, 3)))
  elif broken.startswith("truncated"):
    image.write_bytes(image.read_bytes()[:300])
  elif broken == "not_an_image":
    image.write_text("these are my notes, not a photo\n")
  return root


def _fake_run(workdir: Path, data_root: Path, steps=(1, 2)) -> Path:
  """A workdir with checkpoints of a tiny demo config (its state: a stand-in with the layout readers expect)."""
  config = spade_config.preset("demo")
  for k, v in TINY.items():
    spade_config.put(config, k, v)
  config.data.root = str(data_root)
  rng = np.random.default_rng(0)
  state = {"step": np.int32(0), "g": {"params": {"w": rng.normal(size=(64, 256)).astype(np.float32)}},
           "d": {"params": {"w": rng.normal(size=(8,)).astype(np.float32)}}}
  with ckpt_lib.Checkpointer(checkpoints.checkpoint_dir(workdir), async_save=False) as ck:
    for step in steps:
      ck.save(step, jax.tree.map(np.asarray, state), config=config.to_dict())
  return workdir


def _damage(workdir: Path, step: int) -> Path:
  """Deletes the largest data file of checkpoint `step` (an interrupted copy)."""
  files = [p for p in Path(checkpoints.checkpoint_dir(workdir), str(step), "state").rglob("*") if p.is_file()
           and p.parent.name == "d"]
  victim = max(files, key=lambda p: p.stat().st_size)
  victim.unlink()
  return victim


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
  """(case, result) for the whole table, run four at a time."""
  tmp = tmp_path_factory.mktemp("user_errors")
  train, evaluate = str(REPO / "train.py"), str(REPO / "eval.py")
  demo_cfg, custom_cfg = f"--config={REPO / 'configs' / 'demo.py'}", f"--config={REPO / 'configs' / 'custom.py'}"
  demo_root = tmp / "demo_data"
  demo.generate(demo_root, 8, 2, size=32, seed=0)
  tiny_demo = [demo_cfg, *_flags(TINY), f"--config.data.root={demo_root}"]
  run = _fake_run(tmp / "run", demo_root)
  damaged = _fake_run(tmp / "damaged", demo_root)
  _damage(damaged, 2)
  (tmp / "a_file").write_text("")
  (tmp / "raises.py").write_text("def get_config():\n  raise RuntimeError('boom')\n")
  mine = tmp / "my_photos"
  _png(mine / "00000.png", np.zeros((8, 8, 3)))
  (tmp / "G.pth").write_text("not a checkpoint\n")
  (tmp / "empty").mkdir()
  locked = tmp / "locked"
  locked.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom spade_jax.training.lock import WorkdirLock\n"
                             f"with WorkdirLock({str(locked)!r}):\n  print('held', flush=True)\n  time.sleep(600)"],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"

  def custom(broken, *extra):
    root = _custom_data(tmp / f"data_{broken}", broken)
    return [train, custom_cfg, *_flags({**TINY, "data.label_nc": 7}), f"--config.data.root={root}",
            f"--workdir={tmp / ('w_' + broken)}", *extra]

  table = [
      Case("train: a config key with a typo", [train, *tiny_demo, f"--workdir={tmp / 'w1'}",
                                               "--config.train.bacth_size=4"], ("bacth_size", "train.batch_size")),
      Case("train: a value of the wrong type", [train, *tiny_demo, f"--workdir={tmp / 'w2'}",
                                                "--config.train.batch_size=abc"], ("batch_size", "abc")),
      Case("train: a config file that does not exist", [train, f"--config={tmp / 'nope.py'}",
                                                        f"--workdir={tmp / 'w3'}"], ("nope.py", "no such config")),
      Case("train: a config file that raises", [train, f"--config={tmp / 'raises.py'}", f"--workdir={tmp / 'w4'}"],
           ("raises.py", "RuntimeError: boom")),
      Case("train: --workdir is a file", [train, *tiny_demo, f"--workdir={tmp / 'a_file'}"],
           ("a_file", "is a file")),
      Case("train: batch size 0", [train, *tiny_demo, f"--workdir={tmp / 'w5'}", "--config.train.batch_size=0"],
           ("train.batch_size=0",)),
      Case("train: bad values, all named at once", [train, *tiny_demo, f"--workdir={tmp / 'w6'}",
                                                    "--config.data.on_bad_sample=skp", "--config.train.batch_size=-2"],
           ("data.on_bad_sample='skp'", "train.batch_size=-2")),
      Case("train: batch size not divisible by the devices", [train, *tiny_demo, f"--workdir={tmp / 'w7'}",
                                                              "--config.train.batch_size=4"],
           ("batch_size=4", "8 devices"), env={"JAX_NUM_CPU_DEVICES": "8"}),
      Case("train: resume with another model size", [train, *tiny_demo, f"--workdir={run}", "--config.model.ngf=8",
                                                     "--config.train.num_steps=3"],
           (f"the checkpoint in {run}", "model.ngf=4; this run asks for 8", "new --workdir")),
      Case("train: a workdir another run is using", [train, *tiny_demo, f"--workdir={locked}"],
           ("in use by another training run", f"pid={holder.pid}")),
      Case("train: the demo generator on a folder of your own", [train, *tiny_demo, f"--workdir={tmp / 'w8'}",
                                                                 f"--config.data.root={mine}"],
           (str(mine), "did not write")),
      Case("train: a missing data folder", [train, custom_cfg, f"--config.data.root={tmp / 'no_data'}",
                                            f"--workdir={tmp / 'w9'}"], (str(tmp / "no_data"),)),
      Case("train: a label id out of range", custom("label_out_of_range"), ("label id 40", "00003.png")),
      Case("train: an image whose size differs from its label", custom("size_differs"), ("00003.png", "16x16")),
      Case("train: a truncated PNG", custom("truncated"), ("00003.png", "truncated", "on_bad_sample='skip'")),
      Case("train: a file that is not an image", custom("not_an_image"), ("00003.png", "cannot identify")),
      # skip: the bad file is dropped with a warning and the run gets past the data, to the VGG weights it lacks
      Case("train: a truncated PNG with on_bad_sample=skip",
           custom("truncated_skip", "--config.data.on_bad_sample=skip", "--config.loss.lambda_vgg=10"),
           ("vgg19", "--config.loss.lambda_vgg=0"), stderr_has=("skipping bad sample",)),
      Case("eval: a config of another data set", [evaluate, f"--workdir={run}",
                                                  f"--config={REPO / 'configs' / 'cityscapes.py'}"],
           ("data.label_nc=7", "data.label_nc=35", "leave out --config")),
      Case("eval: a damaged newest checkpoint", [evaluate, f"--workdir={damaged}", "--nofid"],
           ("checkpoint 2 in", "incomplete or corrupt", "step 1", "--checkpoint=1")),
      Case("eval: offline, without the Inception weights", [evaluate, f"--workdir={run}", "--fid"],
           ("pt_inception", "SPADE_JAX_CACHE")),
      Case("eval: an empty workdir", [evaluate, f"--workdir={tmp / 'empty'}"], ("holds no checkpoint",)),
      Case("convert: a file that is not a checkpoint", ["-m", "spade_jax.convert", f"--generator={tmp / 'G.pth'}",
                                                        "--preset=coco_stuff", f"--out={tmp / 'converted'}"],
           ("G.pth", "not a PyTorch checkpoint")),
      Case("serve: a folder that is not a checkpoint", ["-m", "spade_jax.serve", f"--checkpoint={tmp / 'empty'}"],
           (str(tmp / "empty"), "holds no checkpoint")),
      Case("launch: no processes", ["-m", "spade_jax.launch", "--processes=0", "--", train], ("--processes=0",)),
  ]
  try:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      results = list(pool.map(lambda c: (c, _run(c, tmp)), table))
  finally:
    holder.kill()
    holder.wait()
  (tmp / "results.json").write_text(json.dumps(  # the README's table is made from this
      [(c.name, r.returncode, [x for x in r.stderr.splitlines() if x.startswith("error:")]) for c, r in results],
      indent=1))
  return {c.name: (c, r) for c, r in results}, {"mine": mine}


CASE_NAMES = [
    "train: a config key with a typo", "train: a value of the wrong type", "train: a config file that does not exist",
    "train: a config file that raises", "train: --workdir is a file", "train: batch size 0",
    "train: bad values, all named at once", "train: batch size not divisible by the devices",
    "train: resume with another model size", "train: a workdir another run is using",
    "train: the demo generator on a folder of your own", "train: a missing data folder",
    "train: a label id out of range", "train: an image whose size differs from its label", "train: a truncated PNG",
    "train: a file that is not an image", "train: a truncated PNG with on_bad_sample=skip",
    "eval: a config of another data set", "eval: a damaged newest checkpoint",
    "eval: offline, without the Inception weights", "eval: an empty workdir",
    "convert: a file that is not a checkpoint", "serve: a folder that is not a checkpoint", "launch: no processes",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_one_error_line_exit_2_no_traceback(cases, name):
  case, r = cases[0][name]
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == EXIT_USER_ERROR, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  assert "Event loop is closed" not in r.stderr, r.stderr[-3000:]
  assert len(errors) == 1, r.stderr[-3000:]
  for needle in case.needles:
    assert needle in errors[0], (needle, errors[0])
  for needle in case.stderr_has:
    assert needle in r.stderr, (needle, r.stderr[-3000:])


def test_the_users_files_are_untouched(cases):
  mine = cases[1]["mine"]
  assert sorted(p.name for p in mine.iterdir()) == ["00000.png"]
  assert not np.asarray(Image.open(mine / "00000.png")).any()  # still the user's black image


def test_load_names_the_damaged_file_and_the_step_to_use(tmp_path):
  import spade_jax
  run = _fake_run(tmp_path / "run", tmp_path / "data")
  victim = _damage(run, 2)
  with pytest.raises(checkpoints.CheckpointError) as e:
    spade_jax.load(run)
  message = str(e.value)
  assert f"checkpoint 2 in {run / 'checkpoints'} is incomplete or corrupt" in message
  assert str(victim.parents[2]) in message and "(array g.params.w)" in message  # the OCDBT folder: its files
  assert "step=1" in message and e.value.step == 2  # are content-addressed, TensorStore names the array
  assert "TensorStore" not in message


def test_train_resumes_from_the_newest_intact_checkpoint(tmp_path, caplog):
  """A damaged newest checkpoint is named, moved to <step>.damaged (kept) and the run resumes from the one before."""
  from spade_jax.training import loop
  run = _fake_run(tmp_path / "run", tmp_path / "data", steps=(1, 2, 3))
  _damage(run, 3)
  ckdir = checkpoints.checkpoint_dir(run)
  ck = ckpt_lib.Checkpointer(ckdir)
  saved = spade_config.from_dict(ck.read_config(1))
  abstract = {"step": jax.ShapeDtypeStruct((), np.int32), "g": {"params": {"w": jax.ShapeDtypeStruct((64, 256),
              np.float32)}}, "d": {"params": {"w": jax.ShapeDtypeStruct((8,), np.float32)}}}
  setup = type("Setup", (), {"target": lambda self: abstract})()
  try:
    state, step, _ = loop._restore_newest_intact(ck, saved, setup, None, lambda start: iter([start]))
  finally:
    ck.close()
  assert step == 2 and state["g"]["params"]["w"].shape == (64, 256)
  assert sorted(p.name for p in Path(ckdir).iterdir()) == ["1", "2", "3.damaged"]
  assert any("checkpoint 3 in" in r.getMessage() and "3.damaged" in r.getMessage() for r in caplog.records)

  other = spade_config.from_dict(saved.to_dict())
  other.model.ngf = 8  # and a config that does not fit is refused, not restored
  ck = ckpt_lib.Checkpointer(ckdir)
  try:
    with pytest.raises(spade_config.UserError, match="model.ngf=4; this run asks for 8"):
      loop._restore_newest_intact(ck, other, setup, None, lambda start: iter([start]))
  finally:
    ck.close()


def test_a_full_disk_stops_with_the_step_and_keeps_the_previous_checkpoint(tmp_path):
  """A checkpoint that does not fit on the disk (a small tmpfs) is a named error; the one before stays restorable."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
    pytest.skip("mounting a tmpfs needs root")
  try:
    state = {"g": {"params": {"w": np.random.default_rng(0).normal(size=(512, 1024)).astype(np.float32)}}}  # 2 MiB
    ck = ckpt_lib.Checkpointer(disk / "checkpoints")
    try:
      ck.save(1, state)
      ck.wait()
      with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint 2 could not be written .* the disk is full"
                         r".* the newest intact checkpoint is step 1"):
        ck.save(2, state)
        ck.wait()
    finally:
      try:
        ck.close()
      except checkpoints.CheckpointError:
        pass
    assert not list((disk / "checkpoints").glob("2*"))  # the partial write is gone, its space given back
    restored = checkpoints.restore_subtrees(disk / "checkpoints", keys=("g",), step=1)
    np.testing.assert_array_equal(np.asarray(restored["g"]["params"]["w"]), state["g"]["params"]["w"])
  finally:
    time.sleep(0.1)
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_workdir_lock_takes_over_from_a_dead_holder(tmp_path, caplog):
  from spade_jax.errors import UserError
  from spade_jax.training.lock import LOCK_FILE, WorkdirLock
  (tmp_path / LOCK_FILE).write_text("host=elsewhere pid=1234567 started=yesterday\n")  # a run that was killed
  with WorkdirLock(tmp_path):
    assert any("pid=1234567" in r.getMessage() for r in caplog.records)
    assert f"pid={os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
    with pytest.raises(UserError, match=f"in use by another training run .*pid={os.getpid()}"):
      WorkdirLock(tmp_path).__enter__()  # flock is per open file: a second open in this process is refused too
  assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean exit leaves no holder behind
  with WorkdirLock(tmp_path):  # and the next run takes it without a warning
    pass
