"""The SPADE train step: a G step, then a D step on the same batch, as the official trainer does.

G step: E (VAE only) encodes the real image to z; G synthesises; D sees [fake; real] in one call; G (+ E) is
updated with hinge + feature matching + VGG (+ KLD). D step: G (updated, still in train mode, as the official code)
synthesises again without gradients; D is updated with the hinge losses. SPADE batch statistics and spectral-norm
vectors update in every training-mode forward, so G's are updated twice per iteration and D's twice, as in torch.

The state is a plain dict pytree: {'step', 'g', 'd', ['e'], 'opt_g', 'opt_d', ['ema']}; 'g'/'d'/'e' hold variable
collections ('params', 'batch_stats', 'spectral'). The G optimiser covers {'g': G params[, 'e': E params]}; 'ema'
is an exponential moving average of those parameters (imaginaire's model averaging), used by eval and synthesis.

Gradient accumulation (`grad_accum` = k > 1): each half of the iteration runs over k micro-batches (rows i::k of the
batch) in a `lax.scan`, averages their gradients and applies one update. Every micro-batch starts from the same
variables, so the spectral-norm iteration (which depends on the weights only) is the same as without accumulation;
batch-norm statistics are per micro-batch (their running averages are averaged), so with 'syncbatch' or 'batch'
norms accumulation is close to, not equal to, the big-batch step; with 'instance' it is equal.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from spade_jax import losses
from spade_jax.models import (VGG19, build_discriminator, build_encoder, build_generator, output_size, reparameterize,
                              semantic_nc)
from spade_jax.models.factory import compute_dtype
from spade_jax.models.layers import at_least_float32
from spade_jax.parallel import DATA
from spade_jax.semantics import make_semantics


@dataclasses.dataclass(frozen=True)
class Model:
  """Everything static about the networks, losses and the step (hashable: closed over by jit)."""
  G: nn.Module
  D: nn.Module
  E: nn.Module | None
  vgg: nn.Module | None
  label_nc: int
  contain_dontcare_label: bool
  no_instance: bool
  lambda_feat: float
  lambda_vgg: float
  lambda_kld: float
  image_size: tuple[int, int]
  semantic_nc: int
  dtype: Any = None           # compute dtype of every network (None: float32)
  grad_accum: int = 1         # micro-batches per update
  ema_decay: float = 0.0      # 0: no EMA of the generator
  ema_start: int = 0          # steps before which the EMA just copies the weights

  @classmethod
  def from_config(cls, config, axis_name: str | None = None) -> "Model":
    d, l, t = config.data, config.loss, config.train
    dtype = compute_dtype(config.model)
    accum, decay = int(t.get("grad_accum", 1)), float(t.get("ema_decay", 0.0))
    if accum < 1:
      raise ValueError(f"config.train.grad_accum must be >= 1, got {accum}")
    if not 0.0 <= decay < 1.0:
      raise ValueError(f"config.train.ema_decay must be in [0, 1) (0 disables the EMA), got {decay}")
    return cls(
        G=build_generator(config, axis_name), D=build_discriminator(config),
        E=build_encoder(config) if config.model.use_vae else None,
        vgg=VGG19(l.vgg_input_norm, dtype=dtype) if l.lambda_vgg > 0 else None,
        label_nc=d.label_nc, contain_dontcare_label=d.contain_dontcare_label, no_instance=d.no_instance,
        lambda_feat=l.lambda_feat, lambda_vgg=l.lambda_vgg, lambda_kld=l.lambda_kld,
        image_size=output_size(d.crop_size, d.aspect_ratio, config.model.num_upsampling_layers),
        semantic_nc=semantic_nc(d), dtype=dtype, grad_accum=accum, ema_decay=decay,
        ema_start=int(t.get("ema_start", 0)))

  def semantics(self, batch):
    return make_semantics(batch["label"], batch.get("instance"), label_nc=self.label_nc,
                          contain_dontcare_label=self.contain_dontcare_label, no_instance=self.no_instance,
                          dtype=self.dtype or jnp.float32)


def init_state(model: Model, tx_g, tx_d, rng) -> dict:
  """Fresh variables (official init) and optimiser states; jit this with out_shardings to build it on devices."""
  kg, kd, ke = jax.random.split(rng, 3)
  h, w = model.image_size
  sem = jnp.zeros((1, h, w, model.semantic_nc))
  z = jnp.zeros((1, model.G.z_dim)) if model.E is not None else None
  state = {"step": jnp.zeros((), jnp.int32),
           "g": model.G.init(kg, sem, z),
           "d": model.D.init(kd, jnp.zeros((1, h, w, model.semantic_nc + 3)))}
  if model.E is not None:
    state["e"] = model.E.init(ke, jnp.zeros((1, h, w, 3)))
  state["opt_g"] = tx_g.init(g_trainable(state))
  state["opt_d"] = tx_d.init(state["d"]["params"])
  if model.ema_decay > 0:
    state["ema"] = g_trainable(state)
  return state


def g_trainable(state) -> dict:
  params = {"g": state["g"]["params"]}
  if "e" in state:
    params["e"] = state["e"]["params"]
  return params


def synthesis_variables(state) -> tuple[dict, dict | None]:
  """(G, E) variables for synthesis from a state (or a checkpoint's restored 'g' / 'e' / 'ema' subtrees): the EMA
  weights when the run keeps them, else the live ones."""
  g_vars, e_vars = state["g"], state.get("e")
  if "ema" in state:
    g_vars = {**g_vars, "params": state["ema"]["g"]}
    e_vars = None if e_vars is None else {**e_vars, "params": state["ema"]["e"]}
  return g_vars, e_vars


def ema_update(ema, params, step, decay: float, start: int):
  """ema <- decay * ema + (1 - decay) * params from step `start` on; before it the EMA follows the weights."""
  d = jnp.where(step < start, 0.0, decay)
  return jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), ema, params)


def _split(outputs, n):
  """D on [fake; real] -> (fake outputs, real outputs), each a list (per scale) of feature lists."""
  fake = [[f[:n] for f in scale] for scale in outputs]
  real = [[f[n:] for f in scale] for scale in outputs]
  return fake, real


def _noise(model, rng, n, axis_name):
  """The VAE's eps for this (device's part of the) batch, drawn for the whole global batch so that a per-device or
  micro-batched step sees the same noise as the one-device step."""
  if model.E is None:
    return None
  shape = (n,) + (model.G.z_dim,)
  if axis_name is None:
    return jax.random.normal(rng, shape, jnp.float32)
  i = jax.lax.axis_index(axis_name)
  eps = jax.random.normal(rng, (n * jax.lax.axis_size(axis_name),) + shape[1:], jnp.float32)
  return jax.lax.dynamic_slice_in_dim(eps, i * n, n)


def _micro(tree, k):
  """(B, ...) leaves -> (k, B / k, ...): micro-batch i holds rows i, i + k, ... (so that each micro-batch of a
  batch sharded over devices is itself spread evenly over them)."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), tree)


def _value_and_grad(loss_fn, params, inputs, k):
  """value_and_grad of `loss_fn(params, inputs) -> (total, (metrics, updates))`, averaged over k micro-batches.

  Of the variable updates, batch statistics are averaged; the rest (spectral-norm vectors) are the same for every
  micro-batch and are taken from the last.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if k == 1:
    (total, (metrics, updates)), grads = grad_fn(params, inputs)
    return total, metrics, updates, grads

  def split(out):
    (total, (metrics, updates)), grads = out
    mean_part = {"total": total, "metrics": metrics, "grads": grads,
                 "stats": {net: {c: v for c, v in u.items() if c == "batch_stats"} for net, u in updates.items()}}
    last_part = {net: {c: v for c, v in u.items() if c != "batch_stats"} for net, u in updates.items()}
    return mean_part, last_part

  micro = _micro(inputs, k)
  shapes = jax.eval_shape(lambda p, x: split(grad_fn(p, x)), params, jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(carry, x):
    acc, _ = carry
    mean_part, last_part = split(grad_fn(params, x))
    return (jax.tree.map(jnp.add, acc, mean_part), last_part), None

  (summed, last), _ = jax.lax.scan(body, zeros, micro)
  mean = jax.tree.map(lambda x: x / k, summed)
  updates = {net: {**last[net], **mean["stats"].get(net, {})} for net in last}
  return mean["total"], mean["metrics"], updates, mean["grads"]


def train_step(model: Model, tx_g, tx_d, state, batch, vgg_params, rng, axis_name: str | None = None):
  """One iteration. Under jit `batch` is the global batch. Under shard_map (`axis_name` bound) it is this device's
  slice: gradients and metrics are averaged over devices. The KLD, a sum over the batch, is scaled by the number of
  devices x micro-batches so that the average of the parts equals the whole batch's sum."""
  sync = (lambda t: jax.lax.pmean(t, axis_name)) if axis_name else (lambda t: t)
  k = model.grad_accum
  kld_scale = (jax.lax.axis_size(axis_name) if axis_name else 1) * k
  rng = jax.random.fold_in(rng, state["step"])
  rng_g, rng_d = jax.random.split(rng)
  sem, real = model.semantics(batch), batch["image"].astype(model.dtype or jnp.float32)
  n_local = real.shape[0]

  # ---- G step ----
  def g_loss(trainable, inp):
    sem, real = inp["sem"], inp["real"]
    metrics, updates = {}, {}
    z = None
    if model.E is not None:
      (mu, logvar), updates["e"] = model.E.apply({**state["e"], "params": trainable["e"]}, real, train=True,
                                                 mutable=["spectral"])
      z = reparameterize(at_least_float32(mu), at_least_float32(logvar), inp["eps"])
      metrics["G_KLD"] = losses.kld(mu, logvar, model.lambda_kld) * kld_scale
    fake, updates["g"] = model.G.apply({**state["g"], "params": trainable["g"]}, sem, z, train=True,
                                       mutable=["batch_stats", "spectral"])
    # D on fake in train mode (one spectral-norm power iteration, as the official D([fake; real]) call), then on
    # real with the iterated vectors and no gradient: the same outputs, without back-propagating through the real
    # half (D's instance norms are per sample). Likewise VGG features of the real image are constants. D takes
    # (semantics, image) apart so that its backward pass skips the label map's channels.
    pred_fake, updates["d"] = model.D.apply(state["d"], (sem, fake), train=True, mutable=["spectral"])
    pred_real = jax.lax.stop_gradient(model.D.apply({**state["d"], **updates["d"]}, (sem, real), train=False))
    metrics["G_GAN"] = losses.hinge_g(pred_fake)
    if model.lambda_feat > 0:
      metrics["G_GAN_Feat"] = losses.feature_matching(pred_fake, pred_real, model.lambda_feat)
    if model.vgg is not None:
      vgg = lambda x: model.vgg.apply({"params": vgg_params}, x)
      metrics["G_VGG"] = losses.vgg_loss(vgg(fake), jax.lax.stop_gradient(vgg(real)), model.lambda_vgg)
    return sum(metrics.values()), (metrics, updates)

  g_in = {"sem": sem, "real": real, "eps": _noise(model, rng_g, n_local, axis_name)}
  g_total, g_metrics, upd, g_grads = _value_and_grad(g_loss, g_trainable(state), g_in, k)
  g_grads = sync(g_grads)
  g_updates, opt_g = tx_g.update(g_grads, state["opt_g"], g_trainable(state))
  new_g = optax.apply_updates(g_trainable(state), g_updates)
  state = {**state, "opt_g": opt_g,
           "g": {**state["g"], **upd["g"], "params": new_g["g"]},
           "d": {**state["d"], **upd["d"]}}
  if "e" in state:
    state["e"] = {**state["e"], **upd["e"], "params": new_g["e"]}
  if "ema" in state:
    state["ema"] = ema_update(state["ema"], new_g, state["step"], model.ema_decay, model.ema_start)

  # ---- D step (the updated G synthesises again, in train mode, without gradients) ----
  def d_loss(d_params, inp):
    sem, real, n = inp["sem"], inp["real"], inp["real"].shape[0]
    updates = {}
    z = None
    if model.E is not None:
      (mu, logvar), updates["e"] = model.E.apply(state["e"], real, train=True, mutable=["spectral"])
      z = reparameterize(at_least_float32(mu), at_least_float32(logvar), inp["eps"])
    fake, updates["g"] = model.G.apply(state["g"], sem, z, train=True, mutable=["batch_stats", "spectral"])
    fake_and_real = jax.lax.stop_gradient((jnp.concatenate([sem, sem], 0), jnp.concatenate([fake, real], 0)))
    d_out, updates["d"] = model.D.apply({**state["d"], "params": d_params}, fake_and_real, train=True,
                                        mutable=["spectral"])
    pred_fake, pred_real = _split(d_out, n)
    metrics = {"D_Fake": losses.hinge_d_fake(pred_fake), "D_real": losses.hinge_d_real(pred_real)}
    return sum(metrics.values()), (metrics, updates)

  d_in = {"sem": sem, "real": real, "eps": _noise(model, rng_d, n_local, axis_name)}
  d_total, d_metrics, upd, d_grads = _value_and_grad(d_loss, state["d"]["params"], d_in, k)
  d_grads = sync(d_grads)
  d_updates, opt_d = tx_d.update(d_grads, state["opt_d"], state["d"]["params"])
  for net in ("g", "e"):
    if net in upd:
      state[net] = {**state[net], **upd[net]}
  state["d"] = {**state["d"], **upd["d"], "params": optax.apply_updates(state["d"]["params"], d_updates)}
  state["opt_d"] = opt_d
  state["step"] = state["step"] + 1

  metrics = {**g_metrics, **d_metrics, "G_total": g_total, "D_total": d_total,
             "lr_G": opt_g.hyperparams["learning_rate"], "lr_D": opt_d.hyperparams["learning_rate"]}
  return state, sync(metrics)


def make_train_step(model: Model, tx_g, tx_d, mesh, state_sharding, *, use_shard_map: bool = False):
  """jit over the mesh with explicit shardings and the state donated.

  Default: plain jit on global arrays; XLA partitions the batch and makes batch statistics global. With
  `use_shard_map` the body runs per device with explicit collectives (G built with axis_name=DATA so SPADE's
  sync batch norm pmeans its statistics; gradients and metrics are pmean'd).
  """
  repl = jax.sharding.NamedSharding(mesh, P())
  data = jax.sharding.NamedSharding(mesh, P(DATA))
  body = functools.partial(train_step, model, tx_g, tx_d)
  if use_shard_map:
    if model.G.axis_name != DATA:
      raise ValueError("the shard_map step needs a generator built with axis_name='data'")
    body = jax.shard_map(functools.partial(train_step, model, tx_g, tx_d, axis_name=DATA), mesh=mesh,
                         in_specs=(P(), P(DATA), P(), P()), out_specs=(P(), P()), check_vma=False)
  return jax.jit(body, in_shardings=(state_sharding, data, repl, repl), out_shardings=(state_sharding, repl),
                 donate_argnums=(0,))
