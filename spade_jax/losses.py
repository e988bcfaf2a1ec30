"""SPADE's losses: hinge GAN, discriminator feature matching, VGG19 perceptual loss and the VAE's KL divergence.

Multiscale discriminator outputs are lists (per scale) of lists of features; the last feature is the patch logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from spade_jax.models.layers import at_least_float32 as _f32

LAMBDA_FEAT = 10.0  # official defaults (train_options)
LAMBDA_VGG = 10.0
LAMBDA_KLD = 0.05
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)  # relu1_1 .. relu5_1


def _multiscale(per_scale_loss, outputs):
  """Mean over every patch logit per scale, averaged over scales (the official sum / num_D)."""
  return sum(per_scale_loss(_f32(scale[-1])) for scale in outputs) / len(outputs)


def hinge_d_real(outputs):
  return _multiscale(lambda x: jnp.mean(jax.nn.relu(1.0 - x)), outputs)


def hinge_d_fake(outputs):
  return _multiscale(lambda x: jnp.mean(jax.nn.relu(1.0 + x)), outputs)


def hinge_g(outputs):
  return _multiscale(lambda x: -jnp.mean(x), outputs)


def feature_matching(fake_outputs, real_outputs, lambda_feat: float = LAMBDA_FEAT):
  """L1 between D's intermediate features of fake and (stop-gradient) real: summed over layers, averaged over scales."""
  num_d = len(fake_outputs)
  loss = 0.0
  for fake_scale, real_scale in zip(fake_outputs, real_outputs):
    for f, r in zip(fake_scale[:-1], real_scale[:-1]):
      loss += jnp.mean(jnp.abs(_f32(f) - _f32(jax.lax.stop_gradient(r))))
  return loss * lambda_feat / num_d


def vgg_loss(fake_feats, real_feats, lambda_vgg: float = LAMBDA_VGG, weights=VGG_WEIGHTS):
  """Weighted L1 between VGG19 features of fake and (stop-gradient) real images."""
  loss = 0.0
  for w, f, r in zip(weights, fake_feats, real_feats):
    loss += w * jnp.mean(jnp.abs(_f32(f) - _f32(jax.lax.stop_gradient(r))))
  return loss * lambda_vgg


def colour_loss(fake, real, lambda_colour: float, cell: int):
  """L1 between the mean colours of `cell` x `cell` cells of fake and (stop-gradient) real images (not official):
  a direct signal for a photo's colours (the demo's styles), which leaves texture and detail to the GAN."""
  pool = lambda x: jax.lax.reduce_window(_f32(x), 0.0, jax.lax.add, (1, cell, cell, 1), (1, cell, cell, 1), "VALID")
  return jnp.mean(jnp.abs(pool(fake) - jax.lax.stop_gradient(pool(real)))) / (cell * cell) * lambda_colour


def free_nats_at(step, free_nats: float, decay: tuple = ()):
  """The KL's free nats at `step`: `free_nats`, falling linearly to 0 between the steps decay = (start, end) when
  given (not official). A plain float where nothing changes over training (the official 0 included)."""
  if free_nats <= 0 or not decay:
    return free_nats
  start, end = decay
  return free_nats * jnp.clip((end - step) / (end - start), 0.0, 1.0)


def kld(mu, logvar, lambda_kld: float = LAMBDA_KLD, free_nats: float = 0.0):
  """-0.5 * sum(1 + logvar - mu^2 - exp(logvar)), summed over batch and latent dims as the official code does.

  `free_nats` > 0 (not official; "free bits", Kingma et al. 2016): only each image's KL above it costs, so the
  prior cannot pull the codes of different styles together once they carry that much information."""
  mu, logvar = _f32(mu), _f32(logvar)
  per_dim = -0.5 * (1 + logvar - jnp.square(mu) - jnp.exp(logvar))
  if not isinstance(free_nats, (int, float)) or free_nats > 0:  # a traced value: a schedule (step.py)
    return jnp.sum(jnp.maximum(per_dim.reshape(per_dim.shape[0], -1).sum(1) - free_nats, 0.0)) * lambda_kld
  return jnp.sum(per_dim) * lambda_kld


def kld_aggregate(mu, logvar, weight: float, num_images, fit: str = "diagonal"):
  """The batch's codes against the prior (not official; the aggregate-posterior KL of Makhzani et al. 2016 and
  Chen et al. 2018): the mixture of the batch's n posteriors fitted by one Gaussian N(m, C), KL(N(m, C) || N(0, I))
  times `num_images` (the official KL's per-image scale) and `weight`. The per-image KL holds each posterior near
  the prior; this holds the codes' spread there, so that codes drawn from N(0, I) land where the data's codes are
  (README "The demo": with the posterior std stuck at 1, the styles' codes spread over twice the prior's width and
  random codes miss the outer styles).

  fit 'diagonal': C's diagonal only, per dimension (the "dimension-wise KL"); blind to a spread along a direction
  that is not an axis, so gentler. 'full': C = diag(mean posterior variance) + the means' scatter / n, whose second
  part has rank n, so log det C comes from an n x n matrix (the determinant lemma) and C itself is never formed."""
  n = mu.shape[0]
  mu, var = _f32(mu).reshape(n, -1), jnp.exp(_f32(logvar)).reshape(n, -1)
  m = jnp.mean(mu, 0)
  if fit == "diagonal":
    v = jnp.mean(jnp.square(mu) + var, 0) - jnp.square(m)
    return 0.5 * jnp.sum(jnp.square(m) + v - 1.0 - jnp.log(v)) * num_images * weight
  if fit != "full":
    raise ValueError(f"kld_aggregate fit {fit!r}: expected 'diagonal' or 'full'")
  s = jnp.mean(var, 0)                      # the diagonal part of C
  centred = (mu - m) / jnp.sqrt(float(n))   # C = diag(s) + centred^T centred
  inner = jnp.eye(n, dtype=jnp.float32) + (centred / s) @ centred.T
  logdet = jnp.sum(jnp.log(s)) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(inner))))
  trace = jnp.sum(s) + jnp.sum(jnp.square(centred))
  return 0.5 * (trace + jnp.sum(jnp.square(m)) - m.shape[0] - logdet) * num_images * weight
