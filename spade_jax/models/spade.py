"""SPADE (spatially-adaptive normalisation) and the SPADE residual block, named after the paper (§3 of Park et al.)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from spade_jax.models.layers import (
  Conv2d,
  ConvParams,
  ParamFreeNorm,
  add_bias,
  conv2d,
  leaky_relu,
  nearest_resize,
)
from spade_jax.platforms import onehot_conv2d

SPADE_HIDDEN = 128  # nhidden, hard-coded in the official SPADE layer


class SPADE(nn.Module):
  """out = norm(x) * (1 + gamma(seg)) + beta(seg).

  The official code modulates with (1 + gamma), so gamma_code = gamma_paper - 1. The label map is resized to x's
  size with torch's nearest rule, then passes a shared conv + ReLU and two convs (none spectral-normalised).

  Two exact reformulations, with the official variables unchanged (mlp_shared, mlp_gamma, mlp_beta; the converter
  and the parity tests see no difference):
  - gamma and beta run as one conv with 2C outputs over the shared activation (one read of it, one larger matmul);
  - with `label_channels` = K > 0, `segmap` is a pair (class ids (B, H, W, 1), extra channels (B, H, W, E)) and
    the shared conv over the one-hot part is a gather of kernel rows (`onehot_conv2d`): no multiplications by the
    K - 1 zeros of every one-hot pixel. The extra channels (the instance-edge map) use an ordinary conv.
  """
  param_free_norm: str = "syncbatch"
  kernel_size: int = 3
  axis_name: str | None = None
  label_channels: int = 0

  @nn.compact
  def __call__(self, x, segmap, train: bool = False):
    c, k = x.shape[-1], self.kernel_size
    normalized = ParamFreeNorm(self.param_free_norm, self.axis_name, name="param_free_norm")(x, train)
    if self.label_channels:
      ids, extra = segmap
      ids, extra = nearest_resize(ids, x.shape[1:3])[..., 0], nearest_resize(extra, x.shape[1:3]).astype(x.dtype)
      kernel, bias = ConvParams(SPADE_HIDDEN, k, self.label_channels + extra.shape[-1], name="mlp_shared")()
      # float32 rows: the kernel gradient is a scatter-add of many pixels into K rows, too lossy in bfloat16
      shared = onehot_conv2d(ids, kernel[:, :, :self.label_channels], k // 2).astype(x.dtype)
      if extra.shape[-1]:
        shared = shared + conv2d(extra, kernel[:, :, self.label_channels:], padding=k // 2)
      # The barrier materialises the sum once: left alone, XLA stores each of the k*k gathers apart (7 ms each at
      # 128x128) so that the ReLU and its backward mask can both re-sum them (one fused gather-sum: 0.6 ms).
      shared = jax.lax.optimization_barrier(add_bias(shared, bias))
    else:
      seg = nearest_resize(segmap, x.shape[1:3]).astype(x.dtype)
      shared = Conv2d(SPADE_HIDDEN, k, padding=k // 2, name="mlp_shared")(seg)
    actv = jax.nn.relu(shared)
    k_gamma, b_gamma = ConvParams(c, k, SPADE_HIDDEN, name="mlp_gamma")()
    k_beta, b_beta = ConvParams(c, k, SPADE_HIDDEN, name="mlp_beta")()
    gamma_beta = conv2d(actv, jnp.concatenate([k_gamma, k_beta], -1), jnp.concatenate([b_gamma, b_beta]),
                        padding=k // 2)
    return normalized * (1 + gamma_beta[..., :c]) + gamma_beta[..., c:]


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
  label_channels: int = 0

  @nn.compact
  def __call__(self, x, seg, train: bool = False):
    fin, fout = x.shape[-1], self.features
    fmiddle = min(fin, fout)
    spade = lambda name: SPADE(self.param_free_norm, self.spade_kernel, self.axis_name, self.label_channels,
                               name=name)
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
