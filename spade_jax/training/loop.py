"""The training loop, top to bottom: mesh -> data -> model and state -> resume -> jitted step -> log / sample /
checkpoint. `train_and_evaluate(config, workdir)` is all that train.py calls."""
from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview

from spade_jax import colormap, parallel
from spade_jax.data import make_dataset, steps_per_epoch
from spade_jax.training import checkpoint as ckpt_lib
from spade_jax.training import writer as writer_lib
from spade_jax.training.schedule import make_optimizers
from spade_jax.training.step import Model, g_trainable, init_state, make_train_step
from spade_jax.weights import official

NUM_SAMPLES = 4  # samples per grid


def _total_steps(config, spe: int) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return spe * (config.train.niter + config.train.niter_decay)


def _load_vgg(config):
  if config.loss.lambda_vgg <= 0:
    return None
  from spade_jax.weights.vgg19 import load_vgg19  # noqa: PLC0415 (only when the loss is on)
  try:
    return load_vgg19(config.loss.vgg_weights or None)
  except Exception as e:
    raise RuntimeError(f"{e}\nThe VGG perceptual loss needs these weights. To train without it, disable it "
                       "explicitly: --config.loss.lambda_vgg=0") from e


def _init_from(state, source: str):
  """Start G (and D / E where the source has them) from another run or a converted official checkpoint."""
  directory = Path(source)
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  loaded = ckpt_lib.restore_subtrees(directory, keys=("g", "d", "e"))
  if "g" not in loaded:
    raise ValueError(f"init_from={source}: no generator ('g') in the checkpoint at {directory}")
  for key, tree in loaded.items():
    if key not in state:
      raise ValueError(f"init_from={source} holds '{key}' but this config has no such network (use_vae?)")
    official.check_variables(tree, state[key], f"init_from={source} ({key})")
    state[key] = jax.tree.map(lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding), tree, state[key])
  logging.info("initialised %s from %s; fresh optimiser states%s", sorted(loaded), source,
               "" if "d" in loaded else " and a fresh discriminator")
  return state


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
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0

  # ---- mesh and data ----
  if config.data.get("demo_generate", False):
    from spade_jax.data import demo  # noqa: PLC0415
    demo.generate(config.data.root, config.data.demo_num_train, config.data.demo_num_val,
                  size=config.data.crop_size, seed=config.seed)
  mesh = parallel.make_mesh(config.parallel.num_data)
  global_bs = config.train.batch_size
  local_bs = parallel.check_batch_size(global_bs, mesh)
  spe = steps_per_epoch(config.data, "train", global_bs)
  if spe == 0:
    raise ValueError(f"the training set has fewer images than config.train.batch_size={global_bs}")
  total_steps = _total_steps(config, spe)
  train_ds = make_dataset(config.data, split="train", batch_size=local_bs, seed=config.seed, train=True,
                          process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = iter(train_ds)

  # ---- model, optimisers, state ----
  model = Model.from_config(config, axis_name=parallel.DATA if config.train.use_shard_map else None)
  tx_g, tx_d = make_optimizers(config, spe)
  init_fn = lambda rng: init_state(model, tx_g, tx_d, rng)
  repl = parallel.replicated(mesh)
  with jax.set_mesh(mesh):
    abstract = jax.eval_shape(init_fn, jax.random.key(config.seed))
    state_sharding = parallel.state_shardings(abstract, mesh, config.parallel.shard_params)
    ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), max_to_keep=config.train.keep_checkpoints)
    if ckpt.latest_step() is not None:
      target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding)
      state = ckpt.restore(abstract_state=target, data_iter=train_iter)
      logging.info("resumed from step %d in %s", ckpt.latest_step(), ckpt.directory)
    else:
      state = jax.jit(init_fn, out_shardings=state_sharding)(jax.random.key(config.seed))
      if config.train.init_from:
        state = _init_from(state, config.train.init_from)
    vgg = _load_vgg(config)
    vgg = jax.device_put(vgg, repl) if vgg is not None else None
    train_step = make_train_step(model, tx_g, tx_d, mesh, state_sharding, use_shard_map=config.train.use_shard_map)
    sample_fn = jax.jit(lambda s, b, r: _samples(model, s, b, r), out_shardings=repl)

  # ---- loop ----
  rng = jax.random.key(config.seed)
  start = int(jax.device_get(state["step"]))
  if is_main:
    logging.info("generator parameters:\n%s", parameter_overview.get_parameter_overview(state["g"]["params"]))
    n_g = sum(x.size for x in jax.tree.leaves(g_trainable(state)))
    n_d = sum(x.size for x in jax.tree.leaves(state["d"]["params"]))
    logging.info("G(+E) %s params, D %s params; %d devices; global batch %d; %d steps/epoch; steps %d -> %d",
                 f"{n_g:,}", f"{n_d:,}", mesh.devices.size, global_bs, spe, start, total_steps)
  writer = writer_lib.MetricWriter(str(workdir), enabled=is_main)
  progress = writer_lib.Progress(total_steps, start_step=start, every_secs=config.train.progress_every_secs)
  palette = _palette(config)
  pending, last_metrics, wait_time, t_log = [], {}, 0.0, time.time()
  step = start

  def save(step):
    ckpt.save(step, state, data_iter=train_iter, config=config.to_dict())

  try:
    with ckpt_lib.PreemptionGuard() as guard, jax.set_mesh(mesh):
      while step < total_steps:
        t0 = time.time()
        local = next(train_iter)
        wait_time += time.time() - t0
        batch = parallel.global_batch(local, mesh)
        state, metrics = train_step(state, batch, vgg, rng)
        step += 1
        pending.append((step, metrics))
        if len(pending) > 1:  # keep one step in flight: overlap host work, yet time (and ETA) real steps
          jax.block_until_ready(pending[-2][1])
        progress.update(step - 1, global_bs)

        last = step == total_steps
        if step % config.train.log_every == 0 or last or guard.requested:
          fetched = _check_finite(pending, ckpt)
          dt = time.time() - t_log
          last_metrics = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
          last_metrics.update(steps_per_sec=len(fetched) / dt, images_per_sec=len(fetched) * global_bs / dt,
                              input_wait_frac=wait_time / dt, epoch=step / spe)
          writer.write_scalars(step, last_metrics)
          pending, wait_time, t_log = [], 0.0, time.time()
        if step % config.train.sample_every == 0 or last:
          fake = sample_fn(state, batch, rng)
          labels = np.asarray(jax.device_get(batch["label"]))[:NUM_SAMPLES]
          real = np.asarray(jax.device_get(batch["image"]))[:NUM_SAMPLES]
          writer.write_images(step, {"samples": writer_lib.sample_grid(
              colormap.colorize(labels, palette), np.asarray(jax.device_get(fake)), real)})
        if step % config.train.checkpoint_every == 0 or last or guard.should_stop(step):
          _check_finite(pending, ckpt)
          save(step)
          if guard.requested and not last:
            logging.warning("preemption signal: saved step %d, exiting", step)
            break
  finally:  # even on an error, finish in-flight (good) checkpoint writes
    ckpt.wait()
    ckpt.close()
    writer.close()
  return last_metrics


def _palette(config):
  if config.data.get("demo_generate", False):
    from spade_jax.data import demo  # noqa: PLC0415
    return np.asarray(demo.COLORS, np.uint8)
  return colormap.palette_for(config.data.dataset, config.data.label_nc + int(config.data.contain_dontcare_label))


def _samples(model: Model, state, batch, rng):
  """Eval-mode synthesis of the first samples of a batch (VAE: the style code of each real image, z = mu)."""
  batch = jax.tree.map(lambda x: x[:NUM_SAMPLES], batch)
  sem = model.semantics(batch)
  z = None
  if model.E is not None:
    z, _ = model.E.apply(state["e"], batch["image"], train=False)
  return model.G.apply(state["g"], sem, z, train=False)
