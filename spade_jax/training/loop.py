"""The training loop, top to bottom: mesh -> data -> networks and state -> resume -> jitted step -> log / sample /
checkpoint. `train_and_evaluate(config, workdir)` is all that train.py calls."""
from __future__ import annotations

import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview

from spade_jax import checkpoints, parallel, platforms
from spade_jax import config as spade_config
from spade_jax import writer as writer_lib
from spade_jax.data import make_dataset, steps_per_epoch
from spade_jax.errors import UserError
from spade_jax.images import colorize_labels, sample_grid, to_uint8
from spade_jax.models import count_params
from spade_jax.networks import Networks, synthesis_variables
from spade_jax.progress import Progress
from spade_jax.training import checkpointer as ckpt_lib
from spade_jax.training.lock import WorkdirLock
from spade_jax.training.state import create_train_state
from spade_jax.training.step import g_trainable
from spade_jax.weights import official

NUM_SAMPLES = 4  # samples per grid
PERCEPTUAL_SEGMENTER_SEED = 1  # loss.perceptual_net=demo_segmenter (the evaluation's segmenter: seed 0)


def _total_steps(config, spe: int) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return spe * (config.train.niter + config.train.niter_decay)


def _load_vgg(config):
  """The perceptual network's params (None without the loss): VGG19's pretrained weights, or a demo segmenter
  trained now on the real demo images (cached like the evaluation's; seed 1 where the evaluation's is seed 0, so
  the generator is never trained against the network that scores it)."""
  if config.loss.lambda_vgg <= 0:
    return None
  if config.loss.perceptual_net == "demo_segmenter":
    from spade_jax.evaluation import demo_segmenter
    steps = config.eval.demo_segmenter_steps or demo_segmenter.DEFAULT_STEPS  # both demo segmenters alike
    try:
      seg, _ = demo_segmenter.load_or_train(config.data, steps=steps, seed=PERCEPTUAL_SEGMENTER_SEED)
    except ValueError as e:  # not demo data
      raise UserError(f"config.loss.perceptual_net=demo_segmenter trains on the demo's data only: {e}") from None
    return seg.variables["params"]
  from spade_jax.weights.vgg19 import load_vgg19
  try:
    return load_vgg19(config.loss.vgg_weights or None)
  except (UserError, FileNotFoundError) as e:  # not downloadable here, not found, not a VGG19 file
    raise UserError(f"{str(e).rstrip('.')}. The VGG perceptual loss needs these weights; to train without it, "
                    "disable it explicitly: --config.loss.lambda_vgg=0") from e


def _init_from(state, source: str):
  """Start G (and D / E where the source has them) from another run or a converted official checkpoint."""
  directory = Path(source)
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  loaded = checkpoints.restore_subtrees(directory, keys=("g", "d", "e"))
  if "g" not in loaded:
    raise UserError(f"init_from={source}: no generator ('g') in the checkpoint at {directory}")
  for key, tree in loaded.items():
    if key not in state:
      raise UserError(f"init_from={source} holds '{key}' but this config has no such network (use_vae?)")
    official.check_variables(tree, state[key], f"init_from={source} ({key})")
    # via numpy: the restored arrays live on this process's first device, the state on all devices of all hosts
    state[key] = jax.tree.map(lambda new, old: jax.device_put(np.asarray(new).astype(old.dtype), old.sharding),
                              tree, state[key])
  logging.info("initialised %s from %s; fresh optimiser states%s", sorted(loaded), source,
               "" if "d" in loaded else " and a fresh discriminator")
  return state


def _programs(jitted) -> int | None:
  """How many programs a jitted function has compiled (None when it is not a plain jax.jit function)."""
  size = getattr(jitted, "_cache_size", None)
  return size() if size else None


def _restore_newest_intact(ckpt, config, setup, train_iter, train_data):
  """(state, step, iterator) of the newest checkpoint that reads back whole. A damaged one (a file missing or
  truncated: an interrupted copy, a full disk) is named, set aside as `<step>.damaged` and skipped. The config saved
  with the checkpoint must agree with this run's on every key that shapes the state (else Orbax fails obscurely)."""
  for step in reversed(ckpt.all_steps()):
    try:
      with checkpoints.reading(ckpt.directory, step, advice=""):
        saved = spade_config.from_dict(ckpt.read_config(step))  # an older run's config, completed from the schema
      mismatch = spade_config.state_mismatch(saved, config, ckpt.directory.parent)
      if mismatch:  # the user's mistake, not damage: nothing is set aside
        raise UserError(mismatch)
      with checkpoints.reading(ckpt.directory, step, advice=""):
        same_processes = ckpt.has_data_iter(step)
        state = ckpt.restore(step, abstract_state=setup.target(), data_iter=train_iter if same_processes else None)
    except checkpoints.CheckpointError as e:
      aside = ckpt.set_aside(step)
      logging.warning("%s. Moved it to %s; resuming from an earlier checkpoint", e, aside)
      continue
    if not same_processes:  # written by another number of processes: the step is the position in the global order
      train_iter = iter(train_data(step))
      logging.info("the checkpoint's data position was written by another number of processes: continuing at "
                   "global batch %d of the data order", step)
    return state, step, train_iter
  raise checkpoints.CheckpointError(f"no intact checkpoint is left in {ckpt.directory} (the damaged ones were moved "
                                    "to <step>.damaged): start again with a new --workdir, or restore a copy")


def _workdir(workdir) -> Path:
  """The workdir, created; a path that is a file (or cannot be created) is named as the user's mistake."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir={workdir} is a file, not a folder: give a folder for checkpoints and logs")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --workdir={workdir}: {e.strerror or e}") from None
  return workdir


def _check_finite(pending, ckpt):
  """Fetch the queued per-step metrics; stop at the first non-finite loss, naming it and the last checkpoint."""
  fetched = jax.device_get(pending)
  for step, metrics in fetched:
    bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
      last = ckpt.latest_step()
      where = f"step {last} in {ckpt.directory}" if last is not None else "none (no checkpoint was written yet)"
      raise FloatingPointError(f"non-finite loss at step {step}: {bad}. Training stopped; the last good "
                               f"checkpoint is {where}; it was not overwritten.")
  return fetched


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains until the configured number of steps (resuming from `workdir` if it has checkpoints); returns the
  last logged metrics."""
  workdir = _workdir(workdir)
  is_main = jax.process_index() == 0
  with WorkdirLock(workdir, enabled=is_main):
    return _train(spade_config.validate(config), workdir, is_main)


def _train(config, workdir: Path, is_main: bool) -> dict:
  """The run itself, under the workdir's lock and with a validated config."""
  # ---- mesh and data ----
  if config.data.demo_generate:
    from spade_jax.data import demo
    with parallel.main_process_first("demo data"):  # not N processes writing the same files at once
      demo.generate(config.data.root, config.data.demo_num_train, config.data.demo_num_val,
                    size=config.data.crop_size, seed=config.seed)
  mesh = parallel.make_mesh(config.parallel.num_data)
  global_bs = config.train.batch_size
  local_bs = parallel.check_batch_size(global_bs, mesh, config.train.grad_accum)
  spe = steps_per_epoch(config.data, "train", global_bs)
  if spe == 0:
    raise UserError(f"the training set has fewer images than config.train.batch_size={global_bs}")
  total_steps = _total_steps(config, spe)
  rows = parallel.local_rows(mesh, global_bs)  # this process's share of every global batch
  train_data = lambda start: make_dataset(config.data, split="train", batch_size=local_bs, seed=config.seed,
                                          train=True, process_count=jax.process_count(), rows=rows,
                                          start_batch=start)
  train_iter = iter(train_data(0))
  # A fresh run reads its first batch now: a bad file in it (and missing VGG weights) fail before the networks
  # are built and compiled.
  fresh = checkpoints.latest_step(checkpoints.checkpoint_dir(workdir)) is None
  first = next(train_iter) if fresh else None
  vgg = _load_vgg(config)

  # ---- networks, optimisers, state ----
  repl = parallel.replicated(mesh)
  with jax.set_mesh(mesh):
    ckpt = ckpt_lib.Checkpointer(checkpoints.checkpoint_dir(workdir), max_to_keep=config.train.keep_checkpoints)
    resumed = ckpt.latest_step()
    state, setup = create_train_state(config, mesh, steps_per_epoch=spe, fresh=resumed is None)
    nets, train_step = setup.spec.nets, setup.step
    if resumed is not None:
      try:
        state, resumed, train_iter = _restore_newest_intact(ckpt, config, setup, train_iter, train_data)
      except BaseException:
        ckpt.close()  # no Orbax threads left behind to print at exit
        raise
      logging.info("resumed from step %d in %s", resumed, ckpt.directory)
    elif config.train.init_from:
      state = _init_from(state, config.train.init_from)
      if "ema" in state:  # the average starts from the loaded weights
        state["ema"] = jax.tree.map(lambda x: x.copy(), g_trainable(state))
    vgg = jax.device_put(vgg, repl) if vgg is not None else None
    sample_fn = jax.jit(lambda s, b: _samples(nets, s, b), out_shardings=repl,  # replicated: every host reads it
                        compiler_options=platforms.compiler_options(platforms.platform_of(mesh)))
  evaluate = _make_evaluator(config, nets, mesh, workdir)  # before training: missing weights fail now

  # ---- loop ----
  rng = jax.random.key(config.seed)
  start = int(jax.device_get(state["step"]))
  if is_main:
    # its statistics fetch the values: not possible for parameters split over hosts (shard_params)
    readable = all(x.is_fully_replicated or x.is_fully_addressable for x in jax.tree.leaves(state["g"]["params"]))
    logging.info("generator parameters:\n%s", parameter_overview.get_parameter_overview(
        state["g"]["params"], include_stats=readable))
    n_g, n_d = count_params(g_trainable(state)), count_params(state["d"]["params"])
    logging.info("G(+E) %s params, D %s params; %d devices; global batch %d; %d steps/epoch; steps %d -> %d",
                 f"{n_g:,}", f"{n_d:,}", mesh.devices.size, global_bs, spe, start, total_steps)
  writer = writer_lib.MetricWriter(str(workdir), enabled=is_main)
  progress = Progress(total_steps, start_step=start, every_secs=config.train.progress_every_secs)
  pending, last_metrics, wait_time, t_log = [], {}, 0.0, time.time()
  step = start
  compiled_steps = None  # jit cache size after the first step: a later increase means a recompilation

  def save(step):
    ckpt.save(step, state, data_iter=train_iter, config=config.to_dict())

  try:
    with ckpt_lib.PreemptionGuard() as guard, jax.set_mesh(mesh):
      while step < total_steps:
        t0 = time.time()
        local, first = (next(train_iter) if first is None else first), None
        wait_time += time.time() - t0
        batch = parallel.global_batch(local, mesh)
        state, metrics = train_step(state, batch, vgg, rng)
        step += 1
        if compiled_steps is None:
          compiled_steps = _programs(train_step)
        pending.append((step, metrics))
        if len(pending) > 1:  # keep one step in flight: overlap host work, yet time (and ETA) real steps
          jax.block_until_ready(pending[-2][1])
        progress.update(step - 1, global_bs)

        last = step == total_steps
        stop = guard.should_stop(step)  # every step, on every host: the hosts agree on the step to stop at
        if step % config.train.log_every == 0 or last or stop:
          fetched = _check_finite(pending, ckpt)
          dt = time.time() - t_log
          last_metrics = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
          last_metrics.update(steps_per_sec=len(fetched) / dt, images_per_sec=len(fetched) * global_bs / dt,
                              input_wait_frac=wait_time / dt, input_wait_ms=1e3 * wait_time / len(fetched),
                              epoch=step / spe)
          if _programs(train_step) != compiled_steps:
            logging.warning("the train step was compiled again at step %d (%d programs): an input changed shape, "
                            "dtype or sharding", step, _programs(train_step))
            compiled_steps = _programs(train_step)
          writer.write_scalars(step, last_metrics)
          pending, wait_time, t_log = [], 0.0, time.time()
        if step % config.train.sample_every == 0 or last:
          # the batch spans all hosts (no host can read it whole): the samples come back replicated
          labels, fake, real = jax.device_get(sample_fn(state, batch))
          writer.write_images(step, {"samples": sample_grid(
              colorize_labels(labels, config.data), np.asarray(fake), np.asarray(real))})
        if step % config.train.checkpoint_every == 0 or last or stop:
          _check_finite(pending, ckpt)
          save(step)
          if stop and not last:
            logging.warning("preemption signal: saved step %d, exiting", step)
            break
        every = config.eval.every_steps
        if evaluate is not None and (last or (every > 0 and step % every == 0)):
          t_log += evaluate(state, step, writer)  # keep evaluation time out of the training rate
  finally:  # even on an error, finish in-flight (good) checkpoint writes
    try:
      ckpt.close()
    finally:
      writer.close()
  return last_metrics


def _samples(nets: Networks, state, batch):
  """Eval-mode synthesis of the first samples of a batch (VAE: the style code of each real image, z = mu); returns
  (labels, synthesis, real images) of those samples."""
  batch = jax.tree.map(lambda x: x[:NUM_SAMPLES], batch)
  g_vars, e_vars = synthesis_variables(state)
  z = nets.encode(e_vars, batch["image"])[0] if nets.E is not None else None
  return batch["label"], nets.synthesize(g_vars, batch, z), batch["image"]


def _make_evaluator(config, nets: Networks, mesh, workdir: Path):
  """Periodic evaluation (config.eval.every_steps > 0; -1: at the end only) with the live state on the training
  mesh: synthesis is jitted with the state where it lives and the batch split over the data axis; scoring and
  writing are eval.py's (spade_jax.evaluation.run). Reports go to workdir/eval/step_<N>/, scalars to the run's
  metrics. An error during an evaluation is logged and turns evaluation off for the rest of the run; training goes
  on."""
  if config.eval.every_steps == 0:
    return None
  from spade_jax.evaluation import protocol, run
  evaluation = run.Evaluation(config, nets.image_size, devices=mesh.devices.size)
  use_ema = bool(config.eval.use_ema)

  def images(state, batch, first):
    g_vars, e_vars = synthesis_variables(state if use_ema else {k: v for k, v in state.items() if k != "ema"})
    z = protocol.eval_latents(first, batch["label"].shape[0], nets.G.z_dim) if nets.E is not None else None
    if "image" in batch:  # the demo's style scores: z = the encoder's mean of each style image
      z = nets.encode(e_vars, batch["image"])[0]
    return nets.synthesize(g_vars, batch, z)

  synth = jax.jit(images, out_shardings=parallel.replicated(mesh),
                  compiler_options=platforms.compiler_options(platforms.platform_of(mesh)))
  disabled = []

  def evaluate(state, step, writer):
    if disabled:
      return 0.0
    t0 = time.time()

    def synthesize(labels, instances, first, style=None):
      local = {"label": labels} if instances is None else {"label": labels, "instance": instances}
      if style is not None:  # uint8 -> [-1, 1] as the data pipeline
        local["image"] = np.asarray(style, np.float32) / np.float32(255) * np.float32(2) - np.float32(1)
      rows = parallel.local_rows(mesh, len(labels))  # this process's share of the batch
      local = {k: v[rows] for k, v in local.items()}
      return to_uint8(jax.device_get(synth(state, parallel.global_batch(local, mesh), first)))

    try:
      with jax.set_mesh(mesh):
        evaluation(synthesize, step, workdir / "eval" / f"step_{step}", writer)
    except Exception:
      logging.exception("evaluation at step %d failed; evaluation is off for the rest of this run", step)
      disabled.append(step)
    return time.time() - t0

  return evaluate
