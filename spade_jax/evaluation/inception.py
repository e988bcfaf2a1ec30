"""The FID Inception v3 of pytorch-fid, in Flax (NHWC), with a converter for its weights.

Matches `pytorch_fid.inception.fid_inception_v3()` + `InceptionV3(output_blocks=[3], resize_input=True,
normalize_input=True)`: torchvision Inception3 with 1008 logits, BasicConv2d = conv (no bias) + BN(eps 1e-3) + ReLU,
Mixed_5b..5d / 6b..6e / 7b using avg_pool(3, 1, 1, count_include_pad=False) in their pool branch, Mixed_7c using
max_pool(3, 1, 1) there (a quirk of the TF graph). Input: NHWC RGB in [0, 1]; bilinear resize to 299x299
(align_corners=False, no antialias, like F.interpolate), then 2x - 1. Output: the 2048-d pool3 features.

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (ported from TF's inception-2015-12-05); its keys are
those of torchvision's Inception3 (`Mixed_5b.branch1x1.conv.weight`, `...bn.running_var`, `fc.weight`, ...).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spade_jax.evaluation._convert import convert_state_dict
from spade_jax.models.layers import bilinear_resize

__all__ = ["FIDInceptionV3", "convert_fid_inception", "load_fid_inception", "FID_INPUT_SIZE"]

FID_INPUT_SIZE = 299


def _pad(p):
  p = (p, p) if isinstance(p, int) else tuple(p)
  return ((p[0], p[0]), (p[1], p[1]))


class BasicConv2d(nn.Module):
  features: int
  kernel: Sequence[int] | int
  stride: int = 1
  padding: Sequence[int] | int = 0

  @nn.compact
  def __call__(self, x):
    k = (self.kernel, self.kernel) if isinstance(self.kernel, int) else tuple(self.kernel)
    x = nn.Conv(self.features, k, strides=(self.stride, self.stride), padding=_pad(self.padding), use_bias=False,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_s1(x):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, 1, name="branch1x1")(x)
    b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3_s1(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name="branch1x1")(x)
    b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3_s1(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (avg pool, count_include_pad=False) or, with max_pool=True, FIDInceptionE_2 (Mixed_7c)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, 1, name="branch1x1")(x)
    b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_s1(x)
    bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """images NHWC in [0, 1] -> (N, 2048) pool3 features (or (features, 1008 logits) with `logits=True`)."""
  resize_input: bool = True
  normalize_input: bool = True
  num_classes: int = 1008

  @nn.compact
  def __call__(self, x, logits: bool = False):
    x = jnp.asarray(x, jnp.float32)
    if self.resize_input:
      x = bilinear_resize(x, (FID_INPUT_SIZE, FID_INPUT_SIZE))
    if self.normalize_input:
      x = 2 * x - 1
    # block 0
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    # block 1
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    # block 2
    x = FIDInceptionA(32, name="Mixed_5b")(x)
    x = FIDInceptionA(64, name="Mixed_5c")(x)
    x = FIDInceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = FIDInceptionC(128, name="Mixed_6b")(x)
    x = FIDInceptionC(160, name="Mixed_6c")(x)
    x = FIDInceptionC(160, name="Mixed_6d")(x)
    x = FIDInceptionC(192, name="Mixed_6e")(x)
    # block 3
    x = InceptionD(name="Mixed_7a")(x)
    x = FIDInceptionE(False, name="Mixed_7b")(x)
    x = FIDInceptionE(True, name="Mixed_7c")(x)
    feats = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1)
    if not logits:
      return feats
    return feats, nn.Dense(self.num_classes, name="fc")(feats)


def _expected_variables(model: FIDInceptionV3):
  x = jax.ShapeDtypeStruct((1, FID_INPUT_SIZE, FID_INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape, x.dtype), logits=True))


def convert_fid_inception(state_dict) -> dict:
  """pytorch-fid `fid_inception_v3()` state dict (numpy or torch tensors) -> Flax variables for FIDInceptionV3."""
  sd = {k.removeprefix("module."): (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in state_dict.items()}
  # AuxLogits (torchvision with aux_logits=True) is not part of the FID network; drop it if a file carries it.
  return convert_state_dict(sd, _expected_variables(FIDInceptionV3()), lambda prefix: prefix.split("."),
                            skip=lambda k: k.startswith("AuxLogits."))


def load_fid_inception(path=None, *, progress: bool = True):
  """(FIDInceptionV3(), variables) from `path`, or from the cached/downloaded pytorch-fid weights.

  Offline with no cached copy, raises `spade_jax.weights.download.WeightsUnavailableError` naming the URL and the
  path to place the file at.
  """
  from spade_jax.weights.download import fetch
  from spade_jax.weights.pth import load_state_dict
  if path is None:
    path = fetch("fid_inception", progress=progress)
  return FIDInceptionV3(), convert_fid_inception(load_state_dict(path))
