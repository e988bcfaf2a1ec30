"""The SPADE train step: a G step, then a D step on the same batch, as the official trainer does.

G step: E (VAE only) encodes the real image to z; G synthesises; D sees [fake; real] in one call; G (+ E) is
updated with hinge + feature matching + VGG (+ KLD). D step: G (updated, still in train mode, as the official code)
synthesises again without gradients; D is updated with the hinge losses. SPADE batch statistics and spectral-norm
vectors update in every training-mode forward, so G's are updated twice per iteration and D's twice, as in torch.

The state is a plain dict pytree: {'step', 'g', 'd', ['e'], 'opt_g', 'opt_d'}; 'g'/'d'/'e' hold variable
collections ('params', 'batch_stats', 'spectral'). The G optimiser covers {'g': G params[, 'e': E params]}.
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
from spade_jax.models import VGG19, reparameterize, build_discriminator, build_encoder, build_generator, output_size, semantic_nc
from spade_jax.parallel import DATA
from spade_jax.semantics import make_semantics


@dataclasses.dataclass(frozen=True)
class Model:
  """Everything static about the networks and losses (hashable: closed over by jit)."""
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

  @classmethod
  def from_config(cls, config, axis_name: str | None = None) -> "Model":
    d, l = config.data, config.loss
    return cls(
        G=build_generator(config, axis_name), D=build_discriminator(config),
        E=build_encoder(config) if config.model.use_vae else None,
        vgg=VGG19(l.vgg_input_norm) if l.lambda_vgg > 0 else None,
        label_nc=d.label_nc, contain_dontcare_label=d.contain_dontcare_label, no_instance=d.no_instance,
        lambda_feat=l.lambda_feat, lambda_vgg=l.lambda_vgg, lambda_kld=l.lambda_kld,
        image_size=output_size(d.crop_size, d.aspect_ratio, config.model.num_upsampling_layers),
        semantic_nc=semantic_nc(d))

  def semantics(self, batch):
    return make_semantics(batch["label"], batch.get("instance"), label_nc=self.label_nc,
                          contain_dontcare_label=self.contain_dontcare_label, no_instance=self.no_instance)


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
  return state


def g_trainable(state) -> dict:
  params = {"g": state["g"]["params"]}
  if "e" in state:
    params["e"] = state["e"]["params"]
  return params


def _split(outputs, n):
  """D on [fake; real] -> (fake outputs, real outputs), each a list (per scale) of feature lists."""
  fake = [[f[:n] for f in scale] for scale in outputs]
  real = [[f[n:] for f in scale] for scale in outputs]
  return fake, real


def _encode(model, e_vars, real, rng, axis_name):
  (mu, logvar), upd = model.E.apply(e_vars, real, train=True, mutable=["spectral"])
  if axis_name is None:
    eps = jax.random.normal(rng, mu.shape, mu.dtype)
  else:  # the same noise as the global-batch step: draw for the whole batch, keep this device's rows
    n, i = mu.shape[0], jax.lax.axis_index(axis_name)
    eps = jax.random.normal(rng, (n * jax.lax.axis_size(axis_name),) + mu.shape[1:], mu.dtype)
    eps = jax.lax.dynamic_slice_in_dim(eps, i * n, n)
  return reparameterize(mu, logvar, eps), mu, logvar, upd


def train_step(model: Model, tx_g, tx_d, state, batch, vgg_params, rng, axis_name: str | None = None):
  """One iteration. Under jit `batch` is the global batch. Under shard_map (`axis_name` bound) it is this device's
  slice: gradients and metrics are averaged over devices, and the KLD, a sum over the batch, is scaled by the
  device count so that its average equals the global-batch sum."""
  sync = (lambda t: jax.lax.pmean(t, axis_name)) if axis_name else (lambda t: t)
  kld_scale = jax.lax.axis_size(axis_name) if axis_name else 1
  rng = jax.random.fold_in(rng, state["step"])
  rng_g, rng_d = jax.random.split(rng)
  sem, real = model.semantics(batch), batch["image"]
  n = real.shape[0]

  # ---- G step ----
  def g_loss(trainable):
    metrics, updates = {}, {}
    z = None
    if model.E is not None:
      z, mu, logvar, updates["e"] = _encode(model, {**state["e"], "params": trainable["e"]}, real, rng_g, axis_name)
      metrics["G_KLD"] = losses.kld(mu, logvar, model.lambda_kld) * kld_scale
    fake, updates["g"] = model.G.apply({**state["g"], "params": trainable["g"]}, sem, z, train=True,
                                       mutable=["batch_stats", "spectral"])
    d_in = jnp.concatenate([jnp.concatenate([sem, fake], -1), jnp.concatenate([sem, real], -1)], 0)
    d_out, updates["d"] = model.D.apply(state["d"], d_in, train=True, mutable=["spectral"])
    pred_fake, pred_real = _split(d_out, n)
    metrics["G_GAN"] = losses.hinge_g(pred_fake)
    if model.lambda_feat > 0:
      metrics["G_GAN_Feat"] = losses.feature_matching(pred_fake, pred_real, model.lambda_feat)
    if model.vgg is not None:
      feats = model.vgg.apply({"params": vgg_params}, jnp.concatenate([fake, real], 0))
      metrics["G_VGG"] = losses.vgg_loss([f[:n] for f in feats], [f[n:] for f in feats], model.lambda_vgg)
    return sum(metrics.values()), (metrics, updates)

  (g_total, (g_metrics, upd)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(g_trainable(state))
  g_grads = sync(g_grads)
  g_updates, opt_g = tx_g.update(g_grads, state["opt_g"], g_trainable(state))
  new_g = optax.apply_updates(g_trainable(state), g_updates)
  state = {**state, "opt_g": opt_g,
           "g": {**state["g"], **upd["g"], "params": new_g["g"]},
           "d": {**state["d"], **upd["d"]}}
  if "e" in state:
    state["e"] = {**state["e"], **upd["e"], "params": new_g["e"]}

  # ---- D step (the updated G synthesises again, in train mode, without gradients) ----
  z = None
  if model.E is not None:
    z, _, _, e_upd = _encode(model, state["e"], real, rng_d, axis_name)
    state["e"] = {**state["e"], **e_upd}
  fake, g_upd = model.G.apply(state["g"], sem, z, train=True, mutable=["batch_stats", "spectral"])
  state["g"] = {**state["g"], **g_upd}
  d_in = jax.lax.stop_gradient(
      jnp.concatenate([jnp.concatenate([sem, fake], -1), jnp.concatenate([sem, real], -1)], 0))

  def d_loss(d_params):
    d_out, d_upd = model.D.apply({**state["d"], "params": d_params}, d_in, train=True, mutable=["spectral"])
    pred_fake, pred_real = _split(d_out, n)
    metrics = {"D_Fake": losses.hinge_d_fake(pred_fake), "D_real": losses.hinge_d_real(pred_real)}
    return sum(metrics.values()), (metrics, d_upd)

  (d_total, (d_metrics, d_upd)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state["d"]["params"])
  d_grads = sync(d_grads)
  d_updates, opt_d = tx_d.update(d_grads, state["opt_d"], state["d"]["params"])
  state["d"] = {**state["d"], **d_upd, "params": optax.apply_updates(state["d"]["params"], d_updates)}
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
