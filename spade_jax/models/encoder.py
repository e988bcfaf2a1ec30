"""The VAE image encoder: a real image -> (mu, logvar) of the 256-d style code z."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from spade_jax.models.layers import Conv2d, Dense, bilinear_resize, instance_norm, leaky_relu

LATENT = 256  # the official encoder's fc_mu / fc_var width (hard-coded there; `z_dim` here)


class ConvEncoder(nn.Module):
  """Six stride-2 SN convs with instance norm on an image resized to `input_size` (official: 256, bilinear, no
  antialias), flattened into fc_mu / fc_var. `ndf` is the official `ngf` (the encoder reuses it).

  `input_size` other than 256 is our extension for small models; the official encoder always resizes to 256.
  `norm` is the official norm_E's sub-norm: 'instance' (default 'spectralinstance': the convs have no bias) or
  'none' ('spectral': convs with bias, no normalisation). Instance norm takes each feature's mean over the image
  away, and with it most of an image's global colour.
  """
  ndf: int = 64
  input_size: int = 256
  spectral: bool = True
  norm: str = "instance"
  z_dim: int = LATENT  # our extension: the official encoder ignores --z_dim and always gives 256
  dtype: Any = None  # compute dtype; parameters, instance-norm statistics and spectral norm stay float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.dtype is not None:
      x = x.astype(self.dtype)
    s = self.input_size
    if s % 64 or s < 128:
      # Six stride-2 convs leave an (s/64)^2 map; at 1x1 instance norm would zero every feature.
      raise ValueError(f"encoder input_size must be a multiple of 64 and >= 128, got {s}")
    if self.norm not in ("instance", "none"):
      raise ValueError(f"encoder norm must be 'instance' or 'none' (official norm_E 'spectralinstance' or "
                       f"'spectral'), got {self.norm!r}")
    if x.shape[1:3] != (s, s):
      x = bilinear_resize(x, (s, s))
    for i, mult in enumerate((1, 2, 4, 8, 8, 8), start=1):
      if i > 1:
        x = leaky_relu(x)
      instance = self.norm == "instance"  # the official code drops the conv bias under a norm layer
      x = Conv2d(mult * self.ndf, 3, 2, 1, use_bias=not instance, spectral=self.spectral, name=f"layer{i}")(x, train)
      if instance:
        x = instance_norm(x)
    x = leaky_relu(x).reshape(x.shape[0], -1)  # NHWC flatten; the converter permutes torch's NCHW rows
    return Dense(self.z_dim, name="fc_mu")(x), Dense(self.z_dim, name="fc_var")(x)


def reparameterize(mu, logvar, eps):
  """z = mu + eps * exp(logvar / 2) for eps ~ N(0, I) drawn by the caller (the train step draws it for the global
  batch, so a per-device step sees the same noise as a one-device step)."""
  return mu + eps * jnp.exp(0.5 * logvar)
