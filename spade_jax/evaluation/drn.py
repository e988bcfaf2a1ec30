"""DRN-D-105 segmentation network (fyu/drn `DRNSeg('drn_d_105', 19)`) in Flax (NHWC), with a weight converter.

Architecture (drn.py, arch 'D', Bottleneck, layers [1, 1, 3, 4, 23, 3, 1, 1], channels 16..512):
layer0 7x7 conv; layer1-2 3x3 conv layers (layer2 stride 2); layer3-6 Bottlenecks (`resnet.ResLayer`, stride in
the 3x3 conv; 3, 4 stride 2; 5, 6 dilated 2 and 4, output stride 8); layer7-8 de-gridding 3x3 conv layers
(dilation 2, 1; no residual); BN eps 1e-5 in inference mode. Head: `seg` 1x1 conv to 19 classes (bias), `up` the
fixed bilinear ConvTranspose2d(19, 19, 16, stride 8, padding 4, groups 19) - here in exact polyphase form - then
LogSoftmax over classes.

Input: RGB in [0, 1] normalised with the Cityscapes mean/std of fyu/drn's info.json (`normalize`). The checkpoint
`drn-d-105_ms_cityscapes.pth` (http://go.yf.io/drn-cityscapes-models) has keys `base.<i>...`, `seg.*`, `up.weight`
(a `module.` prefix from DataParallel is stripped). Scores use the 19 Cityscapes train ids;
`cityscapes_label_to_train_id` maps the 35 label ids (the generator's input) to them, 255 = ignored.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from spade_jax.evaluation._convert import convert_state_dict
from spade_jax.evaluation.resnet import ResLayer, bn, conv, torchvision_block_path

__all__ = ["DRNSeg", "convert_drn_seg", "load_drn_seg", "normalize", "CITYSCAPES_MEAN", "CITYSCAPES_STD",
           "CITYSCAPES_LABEL_TO_TRAIN_ID", "cityscapes_label_to_train_id", "CITYSCAPES_TRAIN_CLASSES"]

CITYSCAPES_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
CITYSCAPES_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)

CITYSCAPES_TRAIN_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                            "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                            "bus", "train", "motorcycle", "bicycle")
# cityscapesScripts labels.py: label id -> train id (ids 0..33; 34 / -1 license plate and anything else -> 255)
_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
              27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LABEL_TO_TRAIN_ID = np.full(256, 255, np.uint8)
for _k, _v in _TRAIN_IDS.items():
  CITYSCAPES_LABEL_TO_TRAIN_ID[_k] = _v


def cityscapes_label_to_train_id(labels) -> np.ndarray:
  """35 Cityscapes label ids (0..34; 255 / negative = unknown) -> 19 train ids, everything else 255 (ignored)."""
  labels = np.asarray(labels).astype(np.int64)
  out = np.full(labels.shape, 255, np.uint8)
  ok = (labels >= 0) & (labels < 256)
  out[ok] = CITYSCAPES_LABEL_TO_TRAIN_ID[labels[ok]]
  return out


def normalize(images):
  """uint8 or [0, 1] float NHWC RGB -> DRN input (ToTensor, then Normalize(mean, std) of info.json)."""
  x = jnp.asarray(images)
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  return (x - jnp.asarray(CITYSCAPES_MEAN, jnp.float32)) / jnp.asarray(CITYSCAPES_STD, jnp.float32)


class ConvLayers(nn.Module):
  """`_make_conv_layers`: n x (3x3 conv, BN, ReLU); the first conv carries the stride."""
  features: int
  n: int
  stride: int = 1
  dilation: int = 1

  @nn.compact
  def __call__(self, x):
    for j in range(self.n):
      x = conv(self.features, 3, self.stride if j == 0 else 1, self.dilation, name=f"conv{j}")(x)
      x = nn.relu(bn(f"bn{j}")(x))
    return x


class BilinearUp(nn.Module):
  """ConvTranspose2d(c, c, 2f, stride f, padding f/2, groups c, no bias), weights from the checkpoint.

  Computed in polyphase form (XLA's CPU convolution with lhs_dilation is very slow): output pixel
  (f*q + r, f*p + s) only sees inputs q-1..q+1, p-1..p+1, so one depthwise 3x3 conv producing f*f phase channels
  per class, then depth-to-space, gives exactly the transposed convolution (zero outside the image).
  """
  classes: int
  factor: int = 8

  @nn.compact
  def __call__(self, x):
    f, c = self.factor, self.classes
    k, p = 2 * f, f // 2
    kernel = self.param("kernel", nn.initializers.zeros, (k, k, 1, c))  # torch (c, 1, k, k) -> HWIO
    # phase kernel K[a+1, b+1, 0, ch*f*f + r*f + s] = w[r + p - f*a, s + p - f*b] (torch index), valid taps only
    r = np.arange(f)
    idx = np.stack([r + p - f * a for a in (-1, 0, 1)])  # (3, f): kernel row for (offset a, phase r)
    valid = (idx >= 0) & (idx < k)
    idx = np.clip(idx, 0, k - 1)
    kk = kernel[:, :, 0, :]  # (k, k, c)
    ph = kk[idx[:, None, :, None], idx[None, :, None, :]]  # (3, 3, f, f, c)
    mask = (valid[:, None, :, None] & valid[None, :, None, :])[..., None]
    ph = jnp.where(mask, ph, 0).transpose(0, 1, 4, 2, 3).reshape(3, 3, 1, c * f * f).astype(x.dtype)
    y = lax.conv_general_dilated(x, ph, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=c)
    n, h, w, _ = y.shape
    y = y.reshape(n, h, w, c, f, f).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, h * f, w * f, c)


class DRNSeg(nn.Module):
  """Normalised NHWC images -> (N, H, W, classes) log-probabilities (`return_logits=True`: pre-softmax, too)."""
  classes: int = 19
  layers: Sequence[int] = (1, 1, 3, 4, 23, 3, 1, 1)
  channels: Sequence[int] = (16, 32, 64, 128, 256, 512, 512, 512)

  @nn.compact
  def __call__(self, x, return_logits: bool = False):
    L, C = self.layers, self.channels
    x = nn.relu(bn("bn0")(conv(C[0], 7, name="conv0")(x)))  # layer0
    x = ConvLayers(C[0], L[0], name="layer1")(x)
    x = ConvLayers(C[1], L[1], stride=2, name="layer2")(x)
    x = ResLayer(C[2], L[2], stride=2, name="layer3")(x)
    x = ResLayer(C[3], L[3], stride=2, name="layer4")(x)
    x = ResLayer(C[4], L[4], dilation=2, name="layer5")(x)
    x = ResLayer(C[5], L[5], dilation=4, name="layer6")(x)
    x = ConvLayers(C[6], L[6], dilation=2, name="layer7")(x)
    x = ConvLayers(C[7], L[7], name="layer8")(x)
    x = conv(self.classes, 1, bias=True, name="seg")(x)
    y = BilinearUp(self.classes, name="up")(x)
    logp = jax.nn.log_softmax(y, axis=-1)
    return (logp, y) if return_logits else logp


def _module_path(prefix: str) -> tuple:
  f = prefix.split(".")
  if f[0] in ("seg", "up"):
    return (f[0],)
  if f[0] != "base" or len(f) < 3:
    raise ValueError(f"unexpected DRNSeg key prefix {prefix!r}")
  i, rest = int(f[1]), f[2:]
  if i == 0:
    return ({"0": "conv0", "1": "bn0"}[rest[0]],)
  if i in (1, 2, 7, 8):
    j, r = divmod(int(rest[0]), 3)
    return (f"layer{i}", f"{('conv', 'bn')[r]}{j}")
  return (f"layer{i}", f"block{int(rest[0])}", *torchvision_block_path(rest[1:]))


def convert_drn_seg(state_dict, model: DRNSeg | None = None) -> dict:
  """fyu/drn DRNSeg state dict (numpy or torch tensors; `module.` prefix allowed) -> Flax variables."""
  model = model or DRNSeg()
  sd = {k.removeprefix("module."): (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in state_dict.items()}
  expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
  return convert_state_dict(sd, expected, _module_path)


def load_drn_seg(path, model: DRNSeg | None = None):
  """(DRNSeg(), variables) from `drn-d-105_ms_cityscapes.pth` (download it from http://go.yf.io/drn-cityscapes-models,
  a Google Drive folder, by hand: it has no stable direct URL)."""
  from spade_jax.weights.pth import load_state_dict
  model = model or DRNSeg()
  return model, convert_drn_seg(load_state_dict(path), model)
