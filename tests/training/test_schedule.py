"""The learning-rate schedule equals the official per-epoch rule at every epoch boundary."""
import ml_collections
import numpy as np
import pytest

from spade_jax.training.schedule import betas, learning_rates, lr_factor


def official_lrs(lr, niter, niter_decay, ttur=True):
  """Re-enacts the official trainer: lr changes only in update_learning_rate(epoch) at the END of each epoch."""
  old_lr, lrs = lr, []
  lr_g, lr_d = (lr / 2, lr * 2) if ttur else (lr, lr)
  for epoch in range(1, niter + niter_decay + 1):
    lrs.append((lr_g, lr_d))  # the lr this epoch trains at
    if epoch > niter:
      new_lr = old_lr - lr / niter_decay
      lr_g, lr_d = (new_lr / 2, new_lr * 2) if ttur else (new_lr, new_lr)
      old_lr = new_lr
  return lrs


@pytest.mark.parametrize("niter,niter_decay,ttur", [(3, 4, True), (2, 5, False), (4, 0, True)])
def test_schedule_matches_official_epoch_rule(niter, niter_decay, ttur):
  spe, lr = 7, 2e-4
  cfg = ml_collections.ConfigDict(dict(lr=lr, no_TTUR=not ttur, beta1=0.0, beta2=0.9))
  lr_g, lr_d = learning_rates(cfg)
  for epoch, (want_g, want_d) in enumerate(official_lrs(lr, niter, niter_decay, ttur)):
    for step in (epoch * spe, epoch * spe + spe - 1):  # first and last iteration of the epoch
      f = float(lr_factor(np.int32(step), spe, niter, niter_decay))
      np.testing.assert_allclose([lr_g * f, lr_d * f], [want_g, want_d], rtol=1e-6, atol=1e-12)
  assert betas(cfg) == ((0.0, 0.9) if ttur else (0.5, 0.999))
