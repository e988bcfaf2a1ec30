"""DeepLabV2-ResNet-101 MSC for COCO-Stuff 164k (kazuto1011/deeplab-pytorch) in Flax (NHWC), weight converter and its
test step: the COCO-Stuff segmentation network of the SPADE protocol ("DeepLabV2 [5, 40] for COCO-Stuff").

Architecture (kazuto1011/deeplab-pytorch, MIT; written here from its description):
  * base = DeepLabV2(n_classes=182, n_blocks=[3, 4, 23, 3], atrous_rates=[6, 12, 18, 24]), Caffe-style ResNet-101:
    layer1 = stem: 7x7 conv stride 2 pad 3 + BN + ReLU, MaxPool(3, 2, 1, ceil_mode=True);
    layer2..5 = bottleneck layers (out 256, 512, 1024, 2048; mid = out/4): `reduce` 1x1 conv carrying the stride,
    `conv3x3` (padding = dilation), `increase` 1x1 (no ReLU), `shortcut` 1x1 conv+BN in each layer's first block;
    layer3 stride 2, layer4 dilation 2, layer5 dilation 4 (output stride 8); BN eps 1e-5, frozen (inference mode).
    aspp = four parallel 3x3 convs 2048 -> 182 with dilation = padding = 6, 12, 18, 24 and bias, *summed*.
  * MSC (inference): logits of the input, and of F.interpolate(x, scale_factor=p, bilinear, align_corners=False)
    for p in (0.5, 0.75) (output size floor(H*p), source coordinates scaled by 1/p, as torch >= 1.6 does with a
    scale factor); the two small logits are bilinearly resized (align_corners=False) to the full-scale logit size and
    the result is the pixel-wise max over all three (the full-scale logits included).
  * 55,919,384 parameters: ResNet-101 trunk 42,500,160 (= torchvision ResNet-101 without fc) + ASPP 13,419,224
    (4 x (2048*9*182 + 182)); asserted in the tests. (A figure of "about 42-44M" is the trunk alone.)

Weights: `deeplabv2_resnet101_msc-cocostuff164k-100000.pth`
(https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/, registered as "deeplabv2_cocostuff164k" in
`spade_jax.weights.download.PRETRAINED`), the state dict of MSC(DeepLabV2), keys:
  base.layer1.conv1.conv.weight, base.layer1.conv1.bn.{weight,bias,running_mean,running_var[,num_batches_tracked]},
  base.layer{2..5}.block{1..n}.{reduce,conv3x3,increase}.conv.weight and .bn.*,
  base.layer{2..5}.block1.shortcut.conv.weight and .shortcut.bn.*,
  base.aspp.c{0..3}.weight / .bias.
The Flax tree keeps these names for the stem and ASPP; the blocks are the shared `resnet.Bottleneck`s, numbered from
0, so `block{k}.{reduce,conv3x3,increase,shortcut}.{conv,bn}` -> `block{k-1}/{conv1,conv2,conv3,downsample_conv}`
and `{bn1,...,downsample_bn}`. The converter checks every key (a `module.` prefix is stripped).

Input: BGR float 0..255 minus the mean (B, G, R) = (104.008, 116.669, 122.675), no std (`normalize` takes RGB uint8).

Resolution and labels: the SPADE protocol segments the *generated* images at the generated resolution (256x256 for
COCO-Stuff) and scores them against the generator's input label maps at that resolution (nearest-resized by the data
pipeline; CC-FPSE#4 describes the same). deeplab-pytorch's test runs on the image as given (no resize): the MSC logits
(33x33 for 256x256 input) are bilinearly upsampled to the image size, softmaxed and argmaxed (`segment_cocostuff`).
Labels: `cocostuff_label_to_eval_id` keeps the pipeline's ids 0..181 and maps the don't-care slot 182 (raw 255) to
255 = ignored.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from spade_jax.colormap import COCO_STUFF_NAMES
from spade_jax.evaluation._convert import convert_state_dict
from spade_jax.evaluation.resnet import ConvBN, ResLayer, conv
from spade_jax.models.layers import bilinear_resize

__all__ = ["DeepLabV2", "DeepLabV2MSC", "NUM_CLASSES", "COCO_STUFF_CLASSES", "MEAN_BGR", "PROTOCOL", "WEIGHTS",
           "convert_deeplab", "load_deeplab", "normalize", "segment_cocostuff", "cocostuff_label_to_eval_id",
           "resize_scale_factor", "max_pool_ceil"]

NUM_CLASSES = 182
COCO_STUFF_CLASSES = COCO_STUFF_NAMES  # eval id i = COCO-Stuff id i + 1 (spade_jax.colormap)
MEAN_BGR = (104.008, 116.669, 122.675)
WEIGHTS = "deeplabv2_cocostuff164k"  # spade_jax.weights.download.PRETRAINED

PROTOCOL = (
    "COCO-Stuff segmentation scores use DeepLabV2-ResNet-101 with multi-scale inputs (kazuto1011/deeplab-pytorch, "
    "deeplabv2_resnet101_msc-cocostuff164k-100000.pth, 182 classes) ported to JAX with its test step: each generated "
    "image is fed at the generated resolution (256x256) as BGR minus the mean (104.008, 116.669, 122.675); the logits "
    "of the image and of its 0.5x and 0.75x bilinear downscales are fused by a pixel-wise max at output stride 8, "
    "bilinearly upsampled (align_corners=False) to the image size, softmaxed and argmaxed, and compared with the "
    "generator's input label map at the same resolution. Label 255 (unlabeled; the pipeline's don't-care slot 182) "
    "is ignored. mIoU and pixel accuracy come from one dataset-level confusion matrix.")


def cocostuff_label_to_eval_id(labels) -> np.ndarray:
  """Our pipeline's COCO-Stuff ids -> eval ids (uint8): 0..181 unchanged; the don't-care slot 182 (raw 255) and
  anything else (negative, >182, an unconverted 255) -> 255 = ignored."""
  labels = np.asarray(labels).astype(np.int64)
  out = np.full(labels.shape, 255, np.uint8)
  ok = (labels >= 0) & (labels < NUM_CLASSES)
  out[ok] = labels[ok].astype(np.uint8)
  return out


def normalize(images):
  """uint8 (or float 0..255) NHWC RGB -> BGR float32 minus MEAN_BGR (deeplab-pytorch's dataset transform)."""
  x = jnp.asarray(images).astype(jnp.float32)[..., ::-1]
  return x - jnp.asarray(MEAN_BGR, jnp.float32)


def _taps_scale(n_in: int, n_out: int, scale: float):
  """torch bilinear (align_corners=False) source taps with an explicit source/destination scale (float32 math)."""
  s = np.float32(scale)
  src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * s - np.float32(0.5), np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0).astype(np.float32)


def resize_scale_factor(x, p: float):
  """F.interpolate(x, scale_factor=p, mode='bilinear', align_corners=False) on NHWC (torch >= 1.6 semantics: output
  floor(n * p), source index (dst + 0.5) / p - 0.5, clamped; no antialiasing)."""
  n, h, w, c = x.shape
  oh, ow = int(np.floor(h * p)), int(np.floor(w * p))
  h0, h1, wh = _taps_scale(h, oh, 1.0 / p)
  w0, w1, ww = _taps_scale(w, ow, 1.0 / p)
  wh = jnp.asarray(wh, x.dtype)[None, :, None, None]
  ww = jnp.asarray(ww, x.dtype)[None, None, :, None]
  rows = x[:, h0] * (1 - wh) + x[:, h1] * wh
  return rows[:, :, w0] * (1 - ww) + rows[:, :, w1] * ww


def max_pool_ceil(x, k: int = 3, s: int = 2, p: int = 1):
  """MaxPool2d(k, s, p, ceil_mode=True) on NHWC: extra bottom/right -inf padding for the ceil windows, minus a last
  window that would start in the padding (PyTorch's rule)."""
  def out_len(n):
    o = -(-(n + 2 * p - k) // s) + 1
    if (o - 1) * s >= n + p:
      o -= 1
    return o
  pads = [(p, (out_len(n) - 1) * s + k - n - p) for n in x.shape[1:3]]
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), [(0, 0)] + pads + [(0, 0)])


class Stem(nn.Module):
  @nn.compact
  def __call__(self, x):
    return max_pool_ceil(ConvBN(64, 7, 2, name="conv1")(x))


class ASPP(nn.Module):
  num_classes: int
  rates: Sequence[int]

  @nn.compact
  def __call__(self, x):
    out = None
    for i, r in enumerate(self.rates):
      y = conv(self.num_classes, 3, dilation=r, bias=True, name=f"c{i}")(x)
      out = y if out is None else out + y
    return out


class DeepLabV2(nn.Module):
  """Normalised NHWC BGR -> (N, h', w', classes) logits at output stride 8 (h' = ceil-mode stem arithmetic)."""
  num_classes: int = NUM_CLASSES
  n_blocks: Sequence[int] = (3, 4, 23, 3)
  atrous_rates: Sequence[int] = (6, 12, 18, 24)

  @nn.compact
  def __call__(self, x):
    x = Stem(name="layer1")(x)
    layer = functools.partial(ResLayer, stride_in_1x1=True)  # Caffe ResNet: the stride in the first 1x1 conv
    x = layer(64, self.n_blocks[0], name="layer2")(x)
    x = layer(128, self.n_blocks[1], stride=2, name="layer3")(x)
    x = layer(256, self.n_blocks[2], dilation=2, name="layer4")(x)
    x = layer(512, self.n_blocks[3], dilation=4, name="layer5")(x)
    return ASPP(self.num_classes, tuple(self.atrous_rates), name="aspp")(x)


class DeepLabV2MSC(nn.Module):
  """MSC(DeepLabV2) in inference mode: pixel-wise max of the full-scale logits and the resized logits of the
  `scales` downscaled inputs (one shared `base`). Returns (N, h', w', classes) logits."""
  num_classes: int = NUM_CLASSES
  n_blocks: Sequence[int] = (3, 4, 23, 3)
  atrous_rates: Sequence[int] = (6, 12, 18, 24)
  scales: Sequence[float] = (0.5, 0.75)

  @nn.compact
  def __call__(self, x):
    base = DeepLabV2(self.num_classes, tuple(self.n_blocks), tuple(self.atrous_rates), name="base")
    logits = base(x)
    size = logits.shape[1:3]
    for p in self.scales:
      logits = jnp.maximum(logits, bilinear_resize(base(resize_scale_factor(x, p)), size))
    return logits


_UNITS = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"), "increase": ("conv3", "bn3"),
          "shortcut": ("downsample_conv", "downsample_bn")}  # deeplab-pytorch unit -> resnet.Bottleneck (conv, bn)
_BLOCK_KEY = re.compile(r"base\.(layer[2-5])\.block([1-9][0-9]*)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)")


def _module_path(prefix: str) -> tuple:
  """`base.layer2.block1.reduce.bn` -> (base, layer2, block0, bn1); the stem and ASPP keep their torch names. Other
  prefixes (an older layout) get a path outside the model, so the converter reports them as unused."""
  m = _BLOCK_KEY.fullmatch(prefix)
  if m:
    layer, k, unit, part = m.groups()
    return ("base", layer, f"block{int(k) - 1}", _UNITS[unit][part == "bn"])
  f = tuple(prefix.split("."))
  return f if f[:2] in (("base", "layer1"), ("base", "aspp")) else ("unknown", *f)


def convert_deeplab(state_dict, model: DeepLabV2MSC | None = None) -> dict:
  """deeplab-pytorch MSC(DeepLabV2) state dict (numpy or torch tensors; `module.` prefix allowed) -> Flax variables.

  Raises ValueError listing unused torch keys / missing Flax leaves / shape mismatches.
  """
  model = model or DeepLabV2MSC()
  sd = {k.removeprefix("module."): (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in state_dict.items()}
  single = model.clone(scales=())  # same variables; one trace of the base instead of 1 + len(scales)
  expected = jax.eval_shape(lambda: single.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  return convert_state_dict(sd, expected, _module_path)


def load_deeplab(paths=None, *, model: DeepLabV2MSC | None = None, progress: bool = True):
  """(DeepLabV2MSC(), variables) from `paths` (the .pth file, or a 1-sequence holding it), or from the cached /
  downloaded official file. Offline with nothing cached: `spade_jax.weights.download.WeightsUnavailableError` naming
  the URL and the path to put the file at."""
  from spade_jax.weights.download import fetch
  from spade_jax.weights.pth import load_state_dict
  if paths is None:
    path = fetch(WEIGHTS, progress=progress)
  elif isinstance(paths, (list, tuple)):
    (path,) = paths
  else:
    path = paths
  model = model or DeepLabV2MSC()
  return model, convert_deeplab(load_state_dict(path), model)


@functools.partial(jax.jit, static_argnums=(0,))
def _segment(model, variables, images):
  logits = model.apply(variables, normalize(images))
  logits = bilinear_resize(logits, images.shape[1:3])
  return jnp.argmax(jax.nn.softmax(logits, axis=-1), axis=-1).astype(jnp.int32)


def segment_cocostuff(model: DeepLabV2MSC, variables, images_uint8_nhwc) -> jax.Array:
  """deeplab-pytorch's test step on a batch of same-size uint8 RGB NHWC images -> int32 (N, H, W) ids 0..181.

  BGR - mean, MSC logits (max over scales 1, 0.5, 0.75), bilinear (align_corners=False) upsampling to (H, W),
  softmax, argmax (first index on ties). The images are segmented at the size given (for SPADE: the generated
  resolution, 256x256). One compiled function per (model, image shape); pure and jit-friendly.
  """
  images = jnp.asarray(images_uint8_nhwc)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected uint8 NHWC RGB images, got shape {images.shape}")
  return _segment(model, variables, images)
