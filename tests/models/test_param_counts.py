"""Trainable parameter counts equal the official networks' (counted on the official code)."""
import importlib

import jax
import jax.numpy as jnp
import pytest

from spade_jax.models import build_discriminator, build_encoder, build_generator, count_params, output_size
from spade_jax.semantics import semantic_channels

# (config, G, G with VAE, D); E is 10,463,424 for all.
OFFICIAL = {
    "coco_stuff": (97_480_899, 112_626_883, 5_904_514),
    "ade20k": (96_492_483, 111_942_595, 5_836_930),
    "cityscapes": (93_048_003, 101_136_579, 5_601_410),
}


def _count(module, *shapes):
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *[jnp.zeros(s) for s in shapes]))
  return count_params(variables), variables


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_parameter_counts(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  g_count, g_vae_count, d_count = OFFICIAL[name]
  s = semantic_channels(config.data)
  h, w = output_size(config.data.crop_size, config.data.aspect_ratio, config.model.num_upsampling_layers)
  assert (h, w) == ((256, 512) if name == "cityscapes" else (256, 256))
  assert _count(build_generator(config), (1, h, w, s))[0] == g_count
  config.model.use_vae = True
  n, variables = _count(build_generator(config), (1, h, w, s), (1, 256))
  assert n == g_vae_count
  assert "spectral" in variables and "batch_stats" in variables  # u, v and BN statistics exist but are not counted
  assert _count(build_discriminator(config), (1, h, w, s + 3))[0] == d_count
  assert _count(build_encoder(config), (1, h, w, 3))[0] == 10_463_424
