"""UperNet-101 for ADE20K (mit-semseg, config `ade20k-resnet101-upernet`) in Flax (NHWC), weight converter and the
mit-semseg test procedure: the ADE20K segmentation network of the SPADE protocol ("UperNet101 [51] for ADE20K").

Architecture (CSAILVision/semantic-segmentation-pytorch, BSD-3; written here from its description):
  * encoder: mit-semseg's ResNet-101 with the deep stem - conv3x3 3->64 stride 2, conv3x3 64->64, conv3x3 64->128,
    each + BN + ReLU, MaxPool(3, 2, 1) - then Bottleneck layers [3, 4, 23, 3] (`resnet.ResLayer`; planes 64..512,
    stride in the 3x3 conv, layers 2-4 stride 2, no dilation); the four layer outputs (strides 4, 8, 16, 32) go to
    the decoder.
  * decoder: UPerNet(num_class=150, fc_dim=2048, pool_scales=(1, 2, 3, 6), fpn_dim=512). PPM: AdaptiveAvgPool2d(s)
    of conv5 (PyTorch's bins [floor(i*H/s), ceil((i+1)*H/s)) ), bilinear (align_corners=False) back to conv5's size,
    *then* 1x1 conv 2048->512 + BN + ReLU; concat with conv5, 3x3 conv+BN+ReLU 4096->512. FPN top-down: 1x1
    lateral conv+BN+ReLU, f = lateral + bilinear(f), 3x3 conv+BN+ReLU per level; the 4 levels bilinearly resized to
    stride 4 and concatenated; conv_last = 3x3 conv+BN+ReLU 2048->512, 1x1 conv 512->150 (with bias).
    BN eps 1e-5 in inference mode; every resize is F.interpolate(bilinear, align_corners=False), no antialiasing
    (as in mit-semseg's current code).
  * 83,214,422 parameters (encoder 42,623,936, no fc; decoder 40,590,486), asserted in the tests.

Weights: `encoder_epoch_50.pth` (keys `conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`, `layer1.0.downsample.{0,1}.*`
...) and `decoder_epoch_50.pth` (keys `ppm_conv.{i}.{0,1}.*`, `ppm_last_conv.{0,1}.*`, `fpn_in.{i}.{0,1}.*`,
`fpn_out.{i}.0.{0,1}.*`, `conv_last.0.{0,1}.*`, `conv_last.1.{weight,bias}`) from
http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/, registered in
`spade_jax.weights.download.PRETRAINED` as "upernet101_ade20k_encoder" / "upernet101_ade20k_decoder". The converter
checks them key for key (a `module.` prefix is stripped); mit-semseg itself loads them with strict=False.

Resolution and labels: the SPADE protocol segments the *generated* images at the generated resolution (256x256 for
ADE20K) and scores them against the generator's input label maps at that resolution (nearest-resized by the data
pipeline). `segment_ade20k` then runs mit-semseg's multi-scale test on those 256x256 images (see `PROTOCOL`) and
returns class ids at 256x256. Labels: `ade20k_label_to_eval_id` maps the pipeline's ADE20K ids (raw 0..150, 0 =
"other") to the 150 evaluation ids (raw - 1), "other" -> 255 = ignored, as mit-semseg's "label - 1, -1 ignored".
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spade_jax.colormap import ADE20K_NAMES
from spade_jax.evaluation._convert import convert_state_dict
from spade_jax.evaluation.resnet import ConvBN, ResLayer, bn, conv, torchvision_block_path
from spade_jax.models.layers import bilinear_resize

__all__ = ["UperNet101", "ResNetEncoder", "UPerNetDecoder", "NUM_CLASSES", "ADE20K_CLASSES", "IMAGENET_MEAN",
           "IMAGENET_STD", "DEFAULT_SCALES", "MAX_SIZE", "PADDING_CONSTANT", "PROTOCOL", "WEIGHTS",
           "convert_upernet", "load_upernet", "normalize", "scale_sizes", "pil_bilinear_resize", "segment_ade20k",
           "ade20k_label_to_eval_id", "adaptive_avg_pool"]

NUM_CLASSES = 150
ADE20K_CLASSES = tuple(ADE20K_NAMES[1:])  # eval id i is ADE20K raw label i + 1 (spade_jax.colormap)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SCALES = (300, 375, 450, 525, 600)  # mit-semseg config/ade20k-resnet101-upernet.yaml DATASET.imgSizes
MAX_SIZE = 1000  # imgMaxSize
PADDING_CONSTANT = 32  # padding_constant: target sizes are rounded *up* to a multiple (by resizing, not padding)
WEIGHTS = ("upernet101_ade20k_encoder", "upernet101_ade20k_decoder")  # spade_jax.weights.download.PRETRAINED

PROTOCOL = (
    "ADE20K segmentation scores use UperNet-101 (mit-semseg ade20k-resnet101-upernet, encoder/decoder_epoch_50.pth) "
    "ported to JAX with its test procedure: each generated image (at the generated resolution, 256x256) is resized "
    "with PIL's bilinear resampling (reproduced bit-exactly) so that its short side equals each test size (300, 375, "
    "450, 525, 600; long side capped at 1000) and both sides are rounded up to a multiple of 32, normalised with "
    "the ImageNet mean/std and segmented; the class scores are bilinearly upsampled (align_corners=False) to the "
    "image size, softmaxed and averaged over the test sizes, and the argmax is compared with the generator's input "
    "label map at the same resolution. The 150 classes are the raw ADE20K labels minus one; raw label 0 ('other') "
    "is ignored. mIoU and pixel accuracy come from one dataset-level confusion matrix. SPADE did not publish its "
    "evaluation code or test sizes; this is mit-semseg's default multi-scale test, which a single 256 scale "
    "(scales=(256,)) does not equal.")


def ade20k_label_to_eval_id(labels) -> np.ndarray:
  """Our pipeline's ADE20K label ids -> mit-semseg eval ids (uint8): raw 1..150 -> 0..149; 0 ("other") -> 255.

  The pipeline keeps the raw annotation values 0..150 (spade_jax.data.sources.ade20k_source; label_nc=150 with the
  don't-care flag, 151 channels). ADEChallengeData2016 annotations contain no 255, so the "don't-care slot" there is
  only a reserved value: label_to_array would move a raw 255 to label_nc = 150, which is the class "flag", and cannot be
  told apart afterwards. Everything outside 1..150 (0, negative, >150, an unconverted 255) becomes 255 = ignored.
  """
  labels = np.asarray(labels).astype(np.int64)
  out = np.full(labels.shape, 255, np.uint8)
  ok = (labels >= 1) & (labels <= NUM_CLASSES)
  out[ok] = (labels[ok] - 1).astype(np.uint8)
  return out


def normalize(images):
  """uint8 (or float 0..255) NHWC RGB -> ToTensor (/255) then Normalize(ImageNet mean, std), float32."""
  x = jnp.asarray(images).astype(jnp.float32) / jnp.float32(255.0)
  return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def adaptive_avg_pool(x, out_size: int):
  """torch AdaptiveAvgPool2d(out_size) on NHWC: bin i covers [floor(i*n/s), ceil((i+1)*n/s))."""
  def mat(n):
    m = np.zeros((out_size, n), np.float32)
    for i in range(out_size):
      a, b = (i * n) // out_size, -((-(i + 1) * n) // out_size)
      m[i, a:b] = 1.0 / (b - a)
    return jnp.asarray(m)
  return jnp.einsum("nhwc,ih,jw->nijc", x, mat(x.shape[1]), mat(x.shape[2]), precision=jax.lax.Precision.HIGHEST)


class ResNetEncoder(nn.Module):
  """mit-semseg `Resnet(resnet101)`: NHWC normalised images -> [conv2, conv3, conv4, conv5] (strides 4..32)."""
  layers: Sequence[int] = (3, 4, 23, 3)

  @nn.compact
  def __call__(self, x):
    for i, c in enumerate((64, 64, 128), start=1):
      x = nn.relu(bn(f"bn{i}")(conv(c, 3, 2 if i == 1 else 1, name=f"conv{i}")(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outs = []
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), self.layers), start=1):
      x = ResLayer(planes, n, 1 if i == 1 else 2, name=f"layer{i}")(x)
      outs.append(x)
    return outs


class UPerNetDecoder(nn.Module):
  """mit-semseg `UPerNet`: encoder features -> logits at the stride-4 resolution (before any softmax)."""
  num_classes: int = NUM_CLASSES
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  fpn_dim: int = 512

  @nn.compact
  def __call__(self, conv_out):
    conv5 = conv_out[-1]
    size = conv5.shape[1:3]
    ppm = [conv5]
    for i, s in enumerate(self.pool_scales):
      ppm.append(ConvBN(512, 1, name=f"ppm_conv{i}")(bilinear_resize(adaptive_avg_pool(conv5, s), size)))
    f = ConvBN(self.fpn_dim, 3, name="ppm_last_conv")(jnp.concatenate(ppm, axis=-1))
    feats = [f]
    for i in reversed(range(len(conv_out) - 1)):
      lat = ConvBN(self.fpn_dim, 1, name=f"fpn_in{i}")(conv_out[i])
      f = lat + bilinear_resize(f, lat.shape[1:3])
      feats.append(ConvBN(self.fpn_dim, 3, name=f"fpn_out{i}")(f))
    feats.reverse()
    out_size = feats[0].shape[1:3]
    fused = jnp.concatenate([feats[0]] + [bilinear_resize(t, out_size) for t in feats[1:]], axis=-1)
    x = ConvBN(self.fpn_dim, 3, name="conv_last0")(fused)
    return conv(self.num_classes, 1, bias=True, name="conv_last1")(x)


class UperNet101(nn.Module):
  """Normalised NHWC RGB -> (N, h/4, w/4, 150) logits, or bilinearly resized to `out_size` (mit-semseg's segSize)."""
  layers: Sequence[int] = (3, 4, 23, 3)  # Bottleneck blocks per layer (ResNet-101)
  num_classes: int = NUM_CLASSES
  fpn_dim: int = 512  # mit-semseg's UPerNet fpn_dim (512 in ade20k-resnet101-upernet)

  @nn.compact
  def __call__(self, x, out_size: Sequence[int] | None = None):
    feats = ResNetEncoder(tuple(self.layers), name="encoder")(x)
    logits = UPerNetDecoder(self.num_classes, fpn_dim=self.fpn_dim, name="decoder")(feats)
    return logits if out_size is None else bilinear_resize(logits, tuple(out_size))


# --------------------------------------------------------------------------------------------------- conversion
def _module_path(prefix: str) -> tuple:
  f = prefix.split(".")
  if f[0] == "encoder":
    if len(f) == 2:  # stem conv1..3 / bn1..3
      return ("encoder", f[1])
    return ("encoder", f[1], f"block{int(f[2])}", *torchvision_block_path(f[3:]))
  if f[0] == "decoder":
    name, rest = f[1], f[2:]
    if name in ("ppm_conv", "fpn_in"):
      return ("decoder", f"{name}{int(rest[0])}", ("conv", "bn")[int(rest[1])])
    if name == "ppm_last_conv":
      return ("decoder", name, ("conv", "bn")[int(rest[0])])
    if name == "fpn_out":
      if rest[1] != "0":
        raise ValueError(f"unexpected UPerNet key prefix {prefix!r}")
      return ("decoder", f"fpn_out{int(rest[0])}", ("conv", "bn")[int(rest[2])])
    if name == "conv_last":
      return ("decoder", "conv_last1") if rest[0] == "1" else ("decoder", "conv_last0", ("conv", "bn")[int(rest[1])])
  raise ValueError(f"unexpected UPerNet key prefix {prefix!r}")


def _numpy_sd(state_dict, prefix):
  return {prefix + k.removeprefix("module."): (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
          for k, v in state_dict.items()}


def convert_upernet(encoder_state_dict, decoder_state_dict, model: UperNet101 | None = None) -> dict:
  """mit-semseg encoder + decoder state dicts (numpy or torch tensors) -> Flax variables of `model`.

  Raises ValueError listing unused torch keys / missing Flax leaves / shape mismatches.
  """
  model = model or UperNet101()
  sd = {**_numpy_sd(encoder_state_dict, "encoder."), **_numpy_sd(decoder_state_dict, "decoder.")}
  expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  unknown = []
  for k in sd:
    prefix = k.rpartition(".")[0]
    try:
      _module_path(prefix)
    except (IndexError, KeyError, ValueError):
      unknown.append(k)
  if unknown:
    raise ValueError(f"state dict does not match mit-semseg UperNet-101: {len(unknown)} unexpected torch keys "
                     f"{unknown[:8]}")
  return convert_state_dict(sd, expected, _module_path)


def load_upernet(paths: Sequence | None = None, *, model: UperNet101 | None = None, progress: bool = True):
  """(UperNet101(), variables) from `paths` = (encoder_epoch_50.pth, decoder_epoch_50.pth), or from the cached /
  downloaded official files. Offline with nothing cached: `spade_jax.weights.download.WeightsUnavailableError`
  naming the URL and the path to put the file at."""
  from spade_jax.weights.download import fetch
  from spade_jax.weights.pth import load_state_dict
  if paths is None:
    paths = [fetch(name, progress=progress) for name in WEIGHTS]
  enc, dec = paths
  model = model or UperNet101()
  return model, convert_upernet(load_state_dict(enc), load_state_dict(dec), model)


# ------------------------------------------------------------------------------------------------------ protocol
def scale_sizes(height: int, width: int, scales: Sequence[int] = DEFAULT_SCALES, max_size: int = MAX_SIZE,
               padding_constant: int = PADDING_CONSTANT) -> list[tuple[int, int]]:
  """mit-semseg ValDataset: per test size, (h, w) = int(side * scale) rounded up to a multiple of padding_constant,
  scale = min(short / min(H, W), max_size / max(H, W))."""
  out = []
  for short in scales:
    s = min(short / float(min(height, width)), max_size / float(max(height, width)))
    th, tw = int(height * s), int(width * s)
    p = padding_constant
    out.append((((th - 1) // p + 1) * p, ((tw - 1) // p + 1) * p))
  return out


_PIL_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2


def _pil_bilinear_taps(n_in: int, n_out: int):
  """Pillow's precompute_coeffs + normalize_coeffs_8bpc for the BILINEAR (triangle) filter, full-image box:
  (n_out, k) source indices and (n_out, k) int32 fixed-point coefficients (zero-padded)."""
  scale = n_in / n_out
  filterscale = max(scale, 1.0)
  support = 1.0 * filterscale
  k = int(np.ceil(support)) * 2 + 1
  idx = np.zeros((n_out, k), np.int32)
  coef = np.zeros((n_out, k), np.int32)
  for o in range(n_out):
    center = (o + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), n_in) - xmin
    w = np.array([max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax)])
    if w.sum() != 0.0:
      w = w / w.sum()
    idx[o, :xmax] = np.arange(xmin, xmin + xmax)
    coef[o, :xmax] = np.floor(0.5 + w * (1 << _PIL_PRECISION_BITS)).astype(np.int32)
  return idx, coef


def _pil_pass(x, axis: int, n_out: int):
  idx, coef = _pil_bilinear_taps(x.shape[axis], n_out)
  shape = [1] * x.ndim
  shape[axis] = n_out
  acc = jnp.full(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], 1 << (_PIL_PRECISION_BITS - 1), jnp.int32)
  for t in range(idx.shape[1]):
    acc = acc + jnp.take(x, jnp.asarray(idx[:, t]), axis=axis) * jnp.asarray(coef[:, t]).reshape(shape)
  return jnp.clip(acc >> _PIL_PRECISION_BITS, 0, 255)  # clip8


def pil_bilinear_resize(images, size: Sequence[int]):
  """PIL `Image.resize((w, h), BILINEAR)` of uint8 NHWC images, bit-exact, returned as int32 0..255.

  Pillow resamples horizontally then vertically (each pass skipped when that side keeps its size) with a triangle
  filter whose support grows with the downscaling factor (antialiasing; for upscaling it is align_corners=False
  bilinear), taps normalised inside the image, 22-bit fixed-point coefficients, and rounds each pass to uint8. The
  same integer arithmetic is done here (int32 accumulators cannot overflow: coefficients sum to about 2**22).
  """
  x = jnp.asarray(images).astype(jnp.int32)
  th, tw = int(size[0]), int(size[1])
  if tw != x.shape[2]:
    x = _pil_pass(x, 2, tw)
  if th != x.shape[1]:
    x = _pil_pass(x, 1, th)
  return x


@functools.partial(jax.jit, static_argnums=(0, 3))
def _segment(model, variables, images, sizes):
  h, w = images.shape[1:3]
  scores = jnp.zeros(images.shape[:3] + (model.num_classes,), jnp.float32)
  for size in sizes:
    x = normalize(pil_bilinear_resize(images, size))
    logits = model.apply(variables, x, out_size=(h, w))
    scores = scores + jax.nn.softmax(logits, axis=-1) / len(sizes)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def segment_ade20k(model: UperNet101, variables, images_uint8_nhwc, scales: Sequence[int] = DEFAULT_SCALES, *,
                   max_size: int = MAX_SIZE, padding_constant: int = PADDING_CONSTANT) -> jax.Array:
  """mit-semseg's test procedure on a batch of same-size uint8 RGB NHWC images -> int32 (N, H, W) ids 0..149.

  For each test size in `scales` (short side; long side capped at `max_size`; both rounded up to a multiple of
  `padding_constant`): PIL bilinear resize (bit-exact, `pil_bilinear_resize`), ImageNet normalisation, UperNet,
  logits bilinearly upsampled (align_corners=False) to (H, W), softmax; the scores are averaged over the sizes
  (summing score / len(scales), as mit-semseg does) and the argmax (first index on ties) is the prediction.

  Default `scales` = mit-semseg's config (300, 375, 450, 525, 600), i.e. the "out of the box" multi-scale test.
  SPADE never released its evaluation code or the sizes it used (docs: peers_and_metrics.md section 3.3); a user
  evaluating OASIS outputs with imgSizes (256,) got a much lower mIoU than the paper (OASIS#17), so the multi-scale
  setting matters and is reported with the numbers. `scales=(256,)` runs single scale at the generated resolution.
  One compiled function per (model, image shape, test sizes); pure and jit-friendly (sizes are static).
  """
  images = jnp.asarray(images_uint8_nhwc)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected uint8 NHWC RGB images, got shape {images.shape}")
  sizes = tuple(scale_sizes(images.shape[1], images.shape[2], tuple(scales), max_size, padding_constant))
  return _segment(model, variables, images, sizes)
