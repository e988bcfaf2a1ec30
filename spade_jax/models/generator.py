"""The SPADE generator: a latent grid (from the down-sampled label map, or from z) up-sampled by SPADE ResBlks."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spade_jax.models.layers import Conv2d, Dense, leaky_relu, nearest_resize, upsample2x
from spade_jax.models.spade import SPADEResnetBlock

NUM_UP = {"normal": 5, "more": 6, "most": 7}
Z_DIM = 256  # official; config.model.z_dim sets it (with the encoder's fc_mu / fc_var width)


def latent_size(crop_size: int, aspect_ratio: float, num_upsampling_layers: str) -> tuple[int, int]:
  """(sh, sw) of the first feature map: sw = crop // 2**n_up, sh = round(sw / aspect_ratio) (Python round)."""
  if num_upsampling_layers not in NUM_UP:
    raise ValueError(f"num_upsampling_layers must be one of {sorted(NUM_UP)}, got {num_upsampling_layers!r}")
  sw = crop_size // 2 ** NUM_UP[num_upsampling_layers]
  sh = round(sw / aspect_ratio)
  if sw < 1 or sh < 1:
    raise ValueError(f"crop_size={crop_size} with aspect_ratio={aspect_ratio} and num_upsampling_layers="
                     f"{num_upsampling_layers!r} gives an empty {sh}x{sw} latent grid; use a larger crop_size")
  return sh, sw


def output_size(crop_size: int, aspect_ratio: float, num_upsampling_layers: str) -> tuple[int, int]:
  """The generator's output (H, W): set by the options, not by the label map's size."""
  sh, sw = latent_size(crop_size, aspect_ratio, num_upsampling_layers)
  f = 2 ** NUM_UP[num_upsampling_layers]
  return sh * f, sw * f


class SPADEGenerator(nn.Module):
  """`segmap` is the one-hot semantics (+ edge channel), NHWC. With `use_vae`, `z` (B, 256) feeds the fc layer;
  when z is None it is sampled from N(0, I) with the 'noise' RNG (multimodal synthesis).

  Speed options that leave the variables (and so checkpoint conversion) unchanged: `dtype` is the compute dtype
  (e.g. bfloat16; parameters, normalisation statistics and the spectral-norm power iteration stay float32),
  `remat` recomputes each ResBlk's activations in the backward pass instead of storing them, and
  `label_channels` = K > 0 tells SPADE that the first K channels of `segmap` are one-hot, so its label convs gather
  kernel rows instead of convolving zeros (see `SPADE`).
  """
  ngf: int = 64
  num_upsampling_layers: str = "normal"
  crop_size: int = 256
  aspect_ratio: float = 1.0
  use_vae: bool = False
  z_dim: int = Z_DIM
  spectral: bool = True
  param_free_norm: str = "syncbatch"
  spade_kernel: int = 3
  axis_name: str | None = None
  dtype: Any = None
  remat: bool = False
  label_channels: int = 0

  @nn.compact
  def __call__(self, segmap, z=None, train: bool = False):
    nf = self.ngf
    sh, sw = latent_size(self.crop_size, self.aspect_ratio, self.num_upsampling_layers)
    if self.dtype is not None:
      segmap = segmap.astype(self.dtype)
      z = None if z is None else z.astype(self.dtype)
    resblock = nn.remat(SPADEResnetBlock, static_argnums=(3,)) if self.remat else SPADEResnetBlock
    block = lambda features, name: resblock(
        features, self.spectral, self.param_free_norm, self.spade_kernel, self.axis_name, self.label_channels,
        name=name)
    seg = segmap
    if self.label_channels:
      k = self.label_channels
      seg = (jnp.argmax(segmap[..., :k], axis=-1)[..., None].astype(jnp.int32), segmap[..., k:])
    if self.use_vae:
      if z is None:
        z = jax.random.normal(self.make_rng("noise"), (segmap.shape[0], self.z_dim), segmap.dtype)
      # The converter permutes torch's (C, sh, sw) output order of fc into this NHWC order.
      x = Dense(16 * nf * sh * sw, name="fc")(z).reshape(z.shape[0], sh, sw, 16 * nf)
    else:
      x = Conv2d(16 * nf, 3, padding=1, name="fc")(nearest_resize(segmap, (sh, sw)))

    x = block(16 * nf, "head_0")(x, seg, train)
    x = upsample2x(x)
    x = block(16 * nf, "G_middle_0")(x, seg, train)
    if self.num_upsampling_layers in ("more", "most"):
      x = upsample2x(x)
    x = block(16 * nf, "G_middle_1")(x, seg, train)
    for i, mult in enumerate((8, 4, 2, 1)):
      x = upsample2x(x)
      x = block(mult * nf, f"up_{i}")(x, seg, train)
    if self.num_upsampling_layers == "most":
      x = upsample2x(x)
      x = block(nf // 2, "up_4")(x, seg, train)
    x = Conv2d(3, 3, padding=1, name="conv_img")(leaky_relu(x))
    return jnp.tanh(x)
