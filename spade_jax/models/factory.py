"""Networks from a config (`config.data` label semantics + `config.model` architecture)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from spade_jax import platforms
from spade_jax.errors import UserError
from spade_jax.models.discriminator import MultiscaleDiscriminator
from spade_jax.models.encoder import ConvEncoder
from spade_jax.models.generator import SPADEGenerator
from spade_jax.semantics import label_channels

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # None: the float32 default, no casts


def compute_dtype(model_cfg):
  """config.model.dtype -> the modules' `dtype` (None for float32; spade_jax.config.from_dict gives checkpoints
  written before the option existed float32)."""
  name = str(model_cfg.dtype)
  if name not in DTYPES:
    raise UserError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def spade_label_channels(config, platform: str) -> int:
  """K > 0 (the one-hot channels) when SPADE's label convs gather kernel rows on `platform`
  (`platforms.label_conv_kind`)."""
  return label_channels(config.data) if platforms.label_conv_kind(config, platform) == "gather" else 0


def build_generator(config, axis_name: str | None = None, platform: str | None = None) -> SPADEGenerator:
  """`platform`: where it will run ('cpu', 'gpu', 'tpu'; None: the default device's), for the form of SPADE's
  label convolution (the variables are the same either way)."""
  m = config.model
  platform = platform or platforms.platform_of()
  return SPADEGenerator(
      ngf=m.ngf, num_upsampling_layers=m.num_upsampling_layers, crop_size=config.data.crop_size,
      aspect_ratio=config.data.aspect_ratio, use_vae=m.use_vae, z_dim=m.z_dim, spectral=m.spectral_G,
      param_free_norm=m.param_free_norm, spade_kernel=m.spade_kernel, axis_name=axis_name,
      dtype=compute_dtype(m), remat=bool(m.remat_G), label_channels=spade_label_channels(config, platform))


def build_discriminator(config) -> MultiscaleDiscriminator:
  m = config.model
  return MultiscaleDiscriminator(num_D=m.num_D, ndf=m.ndf, n_layers=m.n_layers_D, spectral=m.spectral_D,
                                 norm=m.discriminator_norm, dtype=compute_dtype(m), remat=bool(m.remat_D))


def build_encoder(config) -> ConvEncoder:
  m = config.model
  return ConvEncoder(ndf=m.ngf, input_size=m.encoder_input_size, spectral=m.spectral_E, norm=m.encoder_norm,
                     z_dim=m.z_dim, dtype=compute_dtype(m))


def count_params(variables) -> int:
  """Trainable weights only (the 'params' collection: not spectral u/v, not BN running statistics)."""
  params = variables.get("params", variables) if hasattr(variables, "get") else variables
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
