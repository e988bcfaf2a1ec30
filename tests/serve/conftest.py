"""Tiny random-weight checkpoints and a running painter server, shared by the API and browser tests.

The weights are drawn at a larger scale than the official init (which makes a random generator's output a flat
grey), so labels, seeds and styles visibly change the synthesis.
"""
import pathlib

import jax
import numpy as np
import pytest

import spade_jax
from configs import default
from spade_jax.models import build_encoder, build_generator
from spade_jax.semantics import semantic_channels
from spade_jax.serve.server import PainterServer
from spade_jax.training.checkpointer import Checkpointer

SIZE = 64
LABEL_NC = 7  # as the demo


def tiny_config(use_vae=True, no_instance=True, ngf=8, label_nc=LABEL_NC):
  c = default.get_config()
  c.data.label_nc = label_nc
  c.data.contain_dontcare_label = False
  c.data.no_instance = no_instance
  c.data.load_size = c.data.crop_size = SIZE
  c.model.ngf = ngf
  c.model.use_vae = use_vae
  c.model.encoder_input_size = 128
  c.model.param_free_norm = "instance"
  c.model.spectral_G = c.model.spectral_E = False
  return c


def _random(tree, rng, scale=0.8):
  """Kernels ~ N(0, scale^2 / fan_in), biases and means 0, variances 1, spectral-norm u / v random unit vectors:
  built in numpy from the shapes (jitting `init` costs ~15 s)."""
  def leaf(path, x):
    keys = [getattr(k, "key", "") for k in path]
    if keys[0] == "spectral":
      v = rng.standard_normal(x.shape)
      return (v / np.linalg.norm(v)).astype(np.float32)
    if x.ndim >= 2:
      return (rng.standard_normal(x.shape) * scale / np.sqrt(np.prod(x.shape[:-1]))).astype(np.float32)
    return (np.ones if keys[-1] == "var" else np.zeros)(x.shape, np.float32)
  return jax.tree_util.tree_map_with_path(leaf, tree)


def write_checkpoint(workdir: pathlib.Path, config, with_encoder=True, seed=0) -> pathlib.Path:
  rng = np.random.default_rng(seed)
  key, f32 = jax.random.key(0), np.float32
  g = build_generator(config)
  z = jax.ShapeDtypeStruct((1, g.z_dim), f32) if config.model.use_vae else None
  state = {"step": np.zeros((), np.int32),
           "g": _random(jax.eval_shape(g.init, key, jax.ShapeDtypeStruct(
               (1, SIZE, SIZE, semantic_channels(config.data)), f32), z), rng)}
  if config.model.use_vae and with_encoder:
    e = build_encoder(config)
    state["e"] = _random(jax.eval_shape(e.init, key, jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), f32)), rng)
  with Checkpointer(workdir / "checkpoints", async_save=False) as c:
    c.save(5, state, config=config.to_dict())
  return workdir


@pytest.fixture(scope="session")
def vae_checkpoint(tmp_path_factory):
  return write_checkpoint(tmp_path_factory.mktemp("serve_vae"), tiny_config())


@pytest.fixture(scope="session")
def server(vae_checkpoint):
  """The VAE painter on a free loopback port, compiled (warm_up) before the first request."""
  srv = PainterServer(spade_jax.load(vae_checkpoint), port=0, max_upload_mb=1, batch_size=4)
  srv.warm_up()
  srv.start()
  yield srv
  srv.close()
