"""Label maps -> the generator's input semantics: one-hot (+ don't-care channel) (+ instance edge map).

The data pipeline maps label 255 to `label_nc` (the don't-care slot) before this point, as the official loaders do.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def num_label_channels(label_nc: int, contain_dontcare_label: bool) -> int:
  return label_nc + int(contain_dontcare_label)


def label_channels(data_cfg) -> int:
  """One-hot channels of a config's label maps: the classes plus the don't-care slot."""
  return num_label_channels(data_cfg.label_nc, data_cfg.contain_dontcare_label)


def semantic_channels(data_cfg) -> int:
  """The generator's input channels: the one-hot labels plus the instance-edge channel."""
  return label_channels(data_cfg) + int(not data_cfg.no_instance)


def check_label_range(label, label_nc: int, contain_dontcare_label: bool, source: str | None = None) -> None:
  """Host-side check; the official code dies with a CUDA 'index out of bounds' assert on a bad id."""
  label = np.asarray(label)
  nc = num_label_channels(label_nc, contain_dontcare_label)
  bad = (label < 0) | (label >= nc)
  if bad.any():
    ids = np.unique(label[bad])
    where = f" in {source}" if source else ""
    if label_nc in ids and not contain_dontcare_label:
      hint = "set config.data.contain_dontcare_label=True if 255 means 'unlabeled'"
    else:
      hint = "set config.data.label_nc to the number of classes"
    raise ValueError(
        f"label id {int(ids[0])}{where} is outside [0, {nc}) for label_nc={label_nc}, contain_dontcare_label="
        f"{contain_dontcare_label} (bad ids: {ids[:10].tolist()}); {hint}")


def instance_edges(instance):
  """(B, H, W) ids -> (B, H, W, 1) float edges: 1 where a pixel differs from any 4-neighbour (both sides marked;
  the image border counts as no difference)."""
  t = instance
  dh = t[:, 1:, :] != t[:, :-1, :]
  dw = t[:, :, 1:] != t[:, :, :-1]
  edge = jnp.zeros(t.shape, bool)
  edge = edge.at[:, 1:, :].max(dh).at[:, :-1, :].max(dh)
  edge = edge.at[:, :, 1:].max(dw).at[:, :, :-1].max(dw)
  return edge[..., None].astype(jnp.float32)


def make_semantics(label, instance=None, *, label_nc: int, contain_dontcare_label: bool, no_instance: bool,
                   dtype=jnp.float32):
  """(B, H, W) int labels [+ instances] -> (B, H, W, semantic_nc). Runs on device; validate ids on the host first
  (`check_label_range`), since one_hot silently maps an out-of-range id to all zeros."""
  nc = num_label_channels(label_nc, contain_dontcare_label)
  sem = jax.nn.one_hot(label, nc, dtype=dtype)
  if not no_instance:
    if instance is None:
      raise ValueError("this config uses instance edges (no_instance=False) but no instance map was given; "
                       "pass instance maps or set config.data.no_instance=True")
    sem = jnp.concatenate([sem, instance_edges(instance).astype(dtype)], axis=-1)
  # Materialised once, as every consumer reads it anyway. Left fusible, the TPU compiler's space-to-batch pass
  # (libtpu 0.0.50) rewrites a label convolution's weight gradient together with the one-hot's compare and aborts
  # the whole compilation ("PropagateOnBackpropFilterConv ... Operands to select must be the same shape"); README,
  # "Compiled ahead of time".
  return jax.lax.optimization_barrier(sem)
