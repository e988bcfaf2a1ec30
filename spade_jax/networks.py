"""The networks of a config and how a batch becomes their input, for every program that runs them (the train step,
sample grids, periodic evaluation, benchmarks), and which weights synthesise from a state or checkpoint.

Below training and inference: it knows the networks, not the losses or the optimisers.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from spade_jax.models import build_discriminator, build_encoder, build_generator, output_size
from spade_jax.models.factory import compute_dtype
from spade_jax.semantics import make_semantics, semantic_channels

__all__ = ["Networks", "synthesis_variables"]


@dataclasses.dataclass(frozen=True)
class Networks:
  """G, D, E (VAE only) of a config and the label semantics they take (hashable: closed over by jit)."""
  G: nn.Module
  D: nn.Module
  E: nn.Module | None
  label_nc: int
  contain_dontcare_label: bool
  no_instance: bool
  image_size: tuple[int, int]
  semantic_nc: int
  dtype: Any = None           # compute dtype of every network (None: float32)

  @classmethod
  def from_config(cls, config, axis_name: str | None = None, platform: str | None = None) -> Networks:
    """`axis_name`: the mesh axis SPADE's sync batch norm averages over (the shard_map step); `platform`: where the
    networks will run (None: the default device's; see `platforms`)."""
    d = config.data
    return cls(
        G=build_generator(config, axis_name, platform), D=build_discriminator(config),
        E=build_encoder(config) if config.model.use_vae else None,
        label_nc=d.label_nc, contain_dontcare_label=d.contain_dontcare_label, no_instance=d.no_instance,
        image_size=output_size(d.crop_size, d.aspect_ratio, config.model.num_upsampling_layers),
        semantic_nc=semantic_channels(d), dtype=compute_dtype(config.model))

  def semantics(self, batch):
    """A batch's label (+ instance) ids -> G's and D's one-hot semantic input, in the compute dtype."""
    return make_semantics(batch["label"], batch.get("instance"), label_nc=self.label_nc,
                          contain_dontcare_label=self.contain_dontcare_label, no_instance=self.no_instance,
                          dtype=self.dtype or jnp.float32)

  def synthesize(self, g_vars, batch, z=None):
    """Eval-mode synthesis, the one way every program runs it (sample grids, evaluation, the notebook API, the
    painter, the ahead-of-time check, the benches): a batch's label (+ instance) ids and, for a VAE generator, z
    (None: sampled with the 'noise' RNG) -> float32 images in [-1, 1]."""
    return self.G.apply(g_vars, self.semantics(batch), z, train=False).astype(jnp.float32)

  def encode(self, e_vars, images):
    """(mu, logvar) of the VAE encoder in eval mode; images in [-1, 1]."""
    return self.E.apply(e_vars, images, train=False)


def synthesis_variables(state) -> tuple[dict, dict | None]:
  """(G, E) variables for synthesis from a state (or a checkpoint's restored 'g' / 'e' / 'ema' subtrees): the EMA
  weights when the run keeps them, else the live ones."""
  g_vars, e_vars = state["g"], state.get("e")
  if "ema" in state:
    g_vars = {**g_vars, "params": state["ema"]["g"]}
    e_vars = None if e_vars is None else {**e_vars, "params": state["ema"]["e"]}
  return g_vars, e_vars
