"""SPADE (spatially-adaptive normalisation) and the SPADE residual block, named after the paper (§3 of Park et al.)."""
from __future__ import annotations

import flax.linen as nn
import jax

from spade_jax.models.layers import Conv2d, ParamFreeNorm, leaky_relu, nearest_resize

SPADE_HIDDEN = 128  # nhidden, hard-coded in the official SPADE layer


class SPADE(nn.Module):
  """out = norm(x) * (1 + gamma(seg)) + beta(seg).

  The official code modulates with (1 + gamma), so gamma_code = gamma_paper - 1. The label map is resized to x's
  size with torch's nearest rule, then passes a shared conv + ReLU and two convs (none spectral-normalised).
  """
  param_free_norm: str = "syncbatch"
  kernel_size: int = 3
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, segmap, train: bool = False):
    c, k = x.shape[-1], self.kernel_size
    normalized = ParamFreeNorm(self.param_free_norm, self.axis_name, name="param_free_norm")(x, train)
    seg = nearest_resize(segmap, x.shape[1:3]).astype(x.dtype)
    actv = jax.nn.relu(Conv2d(SPADE_HIDDEN, k, padding=k // 2, name="mlp_shared")(seg))
    gamma = Conv2d(c, k, padding=k // 2, name="mlp_gamma")(actv)
    beta = Conv2d(c, k, padding=k // 2, name="mlp_beta")(actv)
    return normalized * (1 + gamma) + beta


class SPADEResnetBlock(nn.Module):
  """Pre-activation block: SPADE -> leaky ReLU(0.2) -> conv, twice, plus a shortcut.

  The shortcut is a learned 1x1 conv after its own SPADE only when the channel count changes; the middle width is
  min(fin, fout). Spectral norm sits on conv_0, conv_1 and conv_s.
  """
  features: int
  spectral: bool = True
  param_free_norm: str = "syncbatch"
  spade_kernel: int = 3
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, seg, train: bool = False):
    fin, fout = x.shape[-1], self.features
    fmiddle = min(fin, fout)
    spade = lambda name: SPADE(self.param_free_norm, self.spade_kernel, self.axis_name, name=name)
    if fin != fout:
      shortcut = Conv2d(fout, 1, use_bias=False, spectral=self.spectral, name="conv_s")(
          spade("norm_s")(x, seg, train), train)
    else:
      shortcut = x
    dx = Conv2d(fmiddle, 3, padding=1, spectral=self.spectral, name="conv_0")(
        leaky_relu(spade("norm_0")(x, seg, train)), train)
    dx = Conv2d(fout, 3, padding=1, spectral=self.spectral, name="conv_1")(
        leaky_relu(spade("norm_1")(dx, seg, train)), train)
    return shortcut + dx
