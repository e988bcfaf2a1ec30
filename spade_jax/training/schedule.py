"""Optimisers and the official learning-rate schedule."""
from __future__ import annotations

import jax.numpy as jnp
import optax


def lr_factor(step, steps_per_epoch: int, niter: int, niter_decay: int):
  """The official per-epoch rule: constant for `niter` epochs, then epoch niter + k (k >= 1, 1-based) trains at
  lr * (1 - (k - 1) / niter_decay). The official trainer updates lr at epoch ends, so this is a step function of
  the epoch, not a per-iteration ramp."""
  epoch = step // steps_per_epoch  # 0-based
  if niter_decay <= 0:
    return jnp.ones_like(epoch, jnp.float32)
  decayed = 1.0 - (epoch - niter).astype(jnp.float32) / niter_decay
  return jnp.where(epoch < niter, 1.0, jnp.maximum(decayed, 0.0))


def learning_rates(optim_cfg) -> tuple[float, float]:
  """(lr_G, lr_D): TTUR (default) gives lr/2 and 2*lr; without TTUR both are lr."""
  if optim_cfg.no_TTUR:
    return optim_cfg.lr, optim_cfg.lr
  return optim_cfg.lr / 2, optim_cfg.lr * 2


def betas(optim_cfg) -> tuple[float, float]:
  """TTUR: (beta1, beta2) from the config (default 0, 0.9); no-TTUR: the official (0.5, 0.999)."""
  if optim_cfg.no_TTUR:
    return 0.5, 0.999
  return optim_cfg.beta1, optim_cfg.beta2


def make_optimizers(config, steps_per_epoch: int):
  """Adam for G (+ E) and for D, with the learning rate in the state (inject_hyperparams) for logging."""
  b1, b2 = betas(config.optim)
  niter, niter_decay = config.train.niter, config.train.niter_decay

  def adam(base_lr):
    sched = lambda step: base_lr * lr_factor(step, steps_per_epoch, niter, niter_decay)
    return optax.inject_hyperparams(optax.adam)(learning_rate=sched, b1=b1, b2=b2, eps=1e-8)

  lr_g, lr_d = learning_rates(config.optim)
  return adam(lr_g), adam(lr_d)
