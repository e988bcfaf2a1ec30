"""Multiscale PatchGAN discriminator (pix2pixHD style, with SPADE's May-2019 fix: 4 layers, last two stride 1)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn

from spade_jax.models.layers import Conv2d, avg_pool_3x3_s2, instance_norm, leaky_relu

KW, PADW = 4, 2  # kernel 4, explicit zero padding ceil((4 - 1) / 2) = 2 on every side (not 'SAME')


class NLayerDiscriminator(nn.Module):
  """Returns every group's output (post-activation features for feature matching; the last is the patch logits)."""
  ndf: int = 64
  n_layers: int = 4
  spectral: bool = True
  norm: str = "instance"  # official norm_D's sub-norm: 'instance' ('spectralinstance', convs without bias) or
                          # 'none' ('spectral': convs with bias, no normalisation)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.norm not in ("instance", "none"):
      raise ValueError(f"discriminator norm must be 'instance' or 'none' (official norm_D 'spectralinstance' or "
                       f"'spectral'), got {self.norm!r}")
    feats = []
    x = leaky_relu(Conv2d(self.ndf, KW, 2, PADW, name="model0")(x))  # x: an array or a tuple of channel parts
    feats.append(x)
    nf = self.ndf
    for n in range(1, self.n_layers):
      nf = min(nf * 2, 512)
      stride = 1 if n == self.n_layers - 1 else 2
      x = Conv2d(nf, KW, stride, PADW, use_bias=self.norm == "none", spectral=self.spectral, name=f"model{n}")(x, train)
      x = leaky_relu(instance_norm(x) if self.norm == "instance" else x)
      feats.append(x)
    feats.append(Conv2d(1, KW, 1, PADW, name=f"model{self.n_layers}")(x))
    return feats


class MultiscaleDiscriminator(nn.Module):
  """num_D sub-discriminators on successively average-pooled inputs; returns a list (per scale) of feature lists.

  The input is concat([semantics, image], channel axis): one-hot (+ don't-care) (+ edges) first, then RGB; or the
  tuple (semantics, image).
  `dtype` is the compute dtype (parameters and the spectral-norm iteration stay float32); `remat` recomputes each
  scale's activations in the backward pass.
  """
  num_D: int = 2
  ndf: int = 64
  n_layers: int = 4
  spectral: bool = True
  norm: str = "instance"
  dtype: Any = None
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    """`x`: the input, or a tuple (semantics, image) standing for their concatenation, which back-propagates into
    the image alone (the train step's G half needs no gradient w.r.t. the one-hot label map). The semantics may
    have fewer rows than the image (a divisor): each row then stands for itself repeated in place, as for the
    train step's interleaved fake and real rows."""
    parts = x if isinstance(x, tuple) else (x,)
    if self.dtype is not None:
      parts = tuple(p.astype(self.dtype) for p in parts)
    scale = nn.remat(NLayerDiscriminator, static_argnums=(2,)) if self.remat else NLayerDiscriminator
    outputs = []
    for i in range(self.num_D):
      outputs.append(scale(self.ndf, self.n_layers, self.spectral, self.norm, name=f"discriminator_{i}")(parts, train))
      if i + 1 < self.num_D:
        parts = tuple(avg_pool_3x3_s2(p) for p in parts)
    return outputs
