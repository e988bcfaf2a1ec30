"""Torch references for the segmentation networks of the SPADE protocol, written from torch.nn with the original
module/key names, and their test procedures (the oracle for tests/evaluation/test_{upernet,deeplab}.py).

* mit-semseg (CSAILVision/semantic-segmentation-pytorch), config ade20k-resnet101-upernet: `MITResnetEncoder`
  (mit-semseg's `Resnet` wrapper around its deep-stem ResNet-101; keys `conv1.weight`, `bn1.*`, ..., `layer4.2.bn3.*`)
  and `MITUPerNet` (keys `ppm_conv.{i}.{0,1}`, `ppm_last_conv.{0,1}`, `fpn_in.{i}.{0,1}`, `fpn_out.{i}.0.{0,1}`,
  `conv_last.0.{0,1}`, `conv_last.1`), saved as two state dicts like `encoder_epoch_50.pth` / `decoder_epoch_50.pth`.
  `mit_semseg_predict` is mit-semseg's ValDataset + evaluate(): PIL bilinear resize of each image so that its short side
  is the test size (capped by imgMaxSize), rounded *up* to a multiple of 32, ImageNet normalisation, softmax scores
  upsampled to the image size and averaged over the sizes, argmax.
* kazuto1011/deeplab-pytorch: `TorchMSC(TorchDeepLabV2)` with keys `base.layer1.conv1.{conv,bn}.*`,
  `base.layer{2..5}.block{k}.{reduce,conv3x3,increase,shortcut}.{conv,bn}.*`, `base.aspp.c{0..3}.{weight,bias}`.
  `deeplab_predict` is its main.py test step (BGR - mean, logits upsampled to the image size, softmax, argmax).
* common: random weights, parameter counts, the opt-in `FULL_DEPTH` marker and the NCHW / state-dict helpers that
  both test files need.
"""
import math
import os

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tests.evaluation.torch_refs import _bottleneck_layer as bottleneck_layer


# ------------------------------------------------------------------------------------------------------ mit-semseg
def _conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv3x3_bn_relu(cin, cout):
  return nn.Sequential(_conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MITResnetEncoder(nn.Module):
  """mit-semseg `Resnet(resnet101())`: deep stem (3x3 convs 3->64 s2, 64->64, 64->128), max-pool 3/2/1, layer1..4 of
  torchvision's Bottleneck (stride in the 3x3 conv), the same reference layer as DRN's."""

  def __init__(self, layers=(3, 4, 23, 3)):
    super().__init__()
    self.conv1, self.bn1 = _conv3x3(3, 64, stride=2), nn.BatchNorm2d(64)
    self.conv2, self.bn2 = _conv3x3(64, 64), nn.BatchNorm2d(64)
    self.conv3, self.bn3 = _conv3x3(64, 128), nn.BatchNorm2d(128)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = bottleneck_layer(128, 64, layers[0])
    self.layer2 = bottleneck_layer(256, 128, layers[1], stride=2)
    self.layer3 = bottleneck_layer(512, 256, layers[2], stride=2)
    self.layer4 = bottleneck_layer(1024, 512, layers[3], stride=2)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    x = F.relu(self.bn3(self.conv3(x)))
    x = self.maxpool(x)
    out = []
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      x = layer(x)
      out.append(x)
    return out


class MITUPerNet(nn.Module):
  """mit-semseg `UPerNet(num_class=150, fc_dim=2048, pool_scales=(1,2,3,6), fpn_dim=512)`."""

  def __init__(self, num_class=150, fc_dim=2048, pool_scales=(1, 2, 3, 6), fpn_inplanes=(256, 512, 1024, 2048),
               fpn_dim=512):
    super().__init__()
    self.ppm_pooling = nn.ModuleList([nn.AdaptiveAvgPool2d(s) for s in pool_scales])
    self.ppm_conv = nn.ModuleList([
        nn.Sequential(nn.Conv2d(fc_dim, 512, kernel_size=1, bias=False), nn.BatchNorm2d(512), nn.ReLU(inplace=True))
        for _ in pool_scales])
    self.ppm_last_conv = _conv3x3_bn_relu(fc_dim + len(pool_scales) * 512, fpn_dim)
    self.fpn_in = nn.ModuleList([
        nn.Sequential(nn.Conv2d(c, fpn_dim, kernel_size=1, bias=False), nn.BatchNorm2d(fpn_dim), nn.ReLU(inplace=True))
        for c in fpn_inplanes[:-1]])
    self.fpn_out = nn.ModuleList([nn.Sequential(_conv3x3_bn_relu(fpn_dim, fpn_dim))
                                  for _ in range(len(fpn_inplanes) - 1)])
    self.conv_last = nn.Sequential(_conv3x3_bn_relu(len(fpn_inplanes) * fpn_dim, fpn_dim),
                                   nn.Conv2d(fpn_dim, num_class, kernel_size=1))

  def forward(self, conv_out, segSize=None):
    """segSize None: raw logits at 1/4 resolution; else softmax of the logits upsampled to segSize (inference)."""
    conv5 = conv_out[-1]
    size = conv5.shape[2:]
    ppm = [conv5]
    for pool, conv in zip(self.ppm_pooling, self.ppm_conv):
      ppm.append(conv(F.interpolate(pool(conv5), size, mode="bilinear", align_corners=False)))
    f = self.ppm_last_conv(torch.cat(ppm, 1))
    feats = [f]
    for i in reversed(range(len(conv_out) - 1)):
      lat = self.fpn_in[i](conv_out[i])
      f = lat + F.interpolate(f, size=lat.shape[2:], mode="bilinear", align_corners=False)
      feats.append(self.fpn_out[i](f))
    feats.reverse()
    out_size = feats[0].shape[2:]
    fused = [feats[0]] + [F.interpolate(t, out_size, mode="bilinear", align_corners=False) for t in feats[1:]]
    x = self.conv_last(torch.cat(fused, 1))
    if segSize is None:
      return x
    return F.softmax(F.interpolate(x, size=segSize, mode="bilinear", align_corners=False), dim=1)


def _round_up(x, p):
  return ((x - 1) // p + 1) * p


@torch.no_grad()
def mit_semseg_predict(encoder, decoder, images_uint8_nhwc, img_sizes=(300, 375, 450, 525, 600), max_size=1000,
                       padding_constant=32):
  """mit-semseg eval: per image, PIL-resized copies at each test size, averaged softmax scores, argmax -> (N, H, W)."""
  mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
  preds = []
  for img_np in np.asarray(images_uint8_nhwc):
    img = Image.fromarray(img_np)
    w, h = img.size
    scores = torch.zeros(1, decoder.conv_last[1].out_channels, h, w)
    for short in img_sizes:
      scale = min(short / float(min(h, w)), max_size / float(max(h, w)))
      th, tw = _round_up(int(h * scale), padding_constant), _round_up(int(w * scale), padding_constant)
      x = np.float32(np.array(img.resize((tw, th), Image.BILINEAR))) / 255.
      x = (torch.from_numpy(x.transpose(2, 0, 1).copy()) - mean) / std
      scores = scores + decoder(encoder(x[None]), segSize=(h, w)) / len(img_sizes)
    preds.append(torch.max(scores, dim=1)[1][0].numpy())
  return np.stack(preds)


# ---------------------------------------------------------------------------------------------- deeplab-pytorch
class _ConvBnReLU(nn.Sequential):
  def __init__(self, cin, cout, kernel, stride, padding, dilation, relu=True):
    super().__init__()
    self.add_module("conv", nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False))
    self.add_module("bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=1 - 0.999))
    if relu:
      self.add_module("relu", nn.ReLU())


class _Bottleneck(nn.Module):
  def __init__(self, cin, cout, stride, dilation, downsample):
    super().__init__()
    mid = cout // 4
    self.reduce = _ConvBnReLU(cin, mid, 1, stride, 0, 1, True)
    self.conv3x3 = _ConvBnReLU(mid, mid, 3, 1, dilation, dilation, True)
    self.increase = _ConvBnReLU(mid, cout, 1, 1, 0, 1, False)
    self.shortcut = _ConvBnReLU(cin, cout, 1, stride, 0, 1, False) if downsample else nn.Identity()

  def forward(self, x):
    h = self.increase(self.conv3x3(self.reduce(x)))
    return F.relu(h + self.shortcut(x))


class _ResLayer(nn.Sequential):
  def __init__(self, n, cin, cout, stride, dilation):
    super().__init__()
    for i in range(n):
      self.add_module(f"block{i + 1}", _Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1, dilation,
                                                   i == 0))


class _Stem(nn.Sequential):
  def __init__(self, cout):
    super().__init__()
    self.add_module("conv1", _ConvBnReLU(3, cout, 7, 2, 3, 1))
    self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class _ASPP(nn.Module):
  def __init__(self, cin, cout, rates):
    super().__init__()
    for i, r in enumerate(rates):
      self.add_module(f"c{i}", nn.Conv2d(cin, cout, 3, 1, padding=r, dilation=r, bias=True))

  def forward(self, x):
    return sum(stage(x) for stage in self.children())


class TorchDeepLabV2(nn.Sequential):
  def __init__(self, n_classes=182, n_blocks=(3, 4, 23, 3), atrous_rates=(6, 12, 18, 24)):
    super().__init__()
    ch = [64 * 2 ** p for p in range(6)]
    self.add_module("layer1", _Stem(ch[0]))
    self.add_module("layer2", _ResLayer(n_blocks[0], ch[0], ch[2], 1, 1))
    self.add_module("layer3", _ResLayer(n_blocks[1], ch[2], ch[3], 2, 1))
    self.add_module("layer4", _ResLayer(n_blocks[2], ch[3], ch[4], 1, 2))
    self.add_module("layer5", _ResLayer(n_blocks[3], ch[4], ch[5], 1, 4))
    self.add_module("aspp", _ASPP(ch[5], n_classes, atrous_rates))


class TorchMSC(nn.Module):
  """Inference forward of deeplab-pytorch's MSC: max over the full-scale logits and the logits of the 0.5 / 0.75
  inputs (F.interpolate with scale_factor), the latter bilinearly resized to the full-scale logit size."""

  def __init__(self, base, scales=(0.5, 0.75)):
    super().__init__()
    self.base = base
    self.scales = list(scales)

  def forward(self, x):
    logits = self.base(x)
    size = logits.shape[2:]
    pyramid = [self.base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False))
               for p in self.scales]
    alll = [logits] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in pyramid]
    return torch.max(torch.stack(alll), dim=0)[0]


@torch.no_grad()
def deeplab_predict(model, images_uint8_nhwc):
  """deeplab-pytorch main.py test step on RGB uint8 NHWC images -> (N, H, W) class ids."""
  x = np.asarray(images_uint8_nhwc)[..., ::-1].astype(np.float32)  # cv2.imread gives BGR
  x = x - np.array((104.008, 116.669, 122.675))
  x = torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2).copy())
  logits = F.interpolate(model(x), size=x.shape[2:], mode="bilinear", align_corners=False)
  return torch.argmax(F.softmax(logits, dim=1), dim=1).numpy()


# -------------------------------------------------------------------------------------------------------- common
@torch.no_grad()
def randomize_seg(model, seed=0, residual_scale=1.0):
  """Variance-preserving random weights (He-normal convs, BN near identity with random running statistics), as
  tests/evaluation/torch_refs.py `randomize`; `residual_scale` multiplies the last BN of every residual branch
  (mit-semseg `layer*.*.bn3`, deeplab `*.increase.bn`) so that 23-block stacks stay O(1)."""
  g = torch.Generator().manual_seed(seed)
  for name, m in model.named_modules():
    if isinstance(m, nn.Conv2d):
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / m.weight[0].numel()))
      if m.bias is not None:
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    elif isinstance(m, nn.BatchNorm2d):
      last = ("layer" in name and name.endswith(".bn3")) or name.endswith("increase.bn")
      s = residual_scale if last else 1.0
      m.weight.copy_(s * (0.8 + 0.4 * torch.rand(m.weight.shape, generator=g)))
      m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
      m.running_var.copy_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=g))
  return model.eval()


def num_params(state_dict) -> int:
  """Learnable parameters of a state dict (BN running statistics and counters excluded)."""
  return sum(v.numel() for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked")))


def zero_state_dict(state_dict) -> dict:
  """numpy zeros (broadcast views: no memory) shaped like a torch state dict, e.g. a meta-device module's."""
  return {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in state_dict.items()}


def tree_size(tree) -> int:
  """Number of elements in the leaves of a (Flax variables or eval_shape) tree."""
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(tree))


def tree_shapes(tree):
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


def apply_nchw(model, variables, x_nchw) -> np.ndarray:
  """The jitted Flax model on an NCHW numpy batch, its NHWC output as NCHW numpy, to compare with torch."""
  return nchw(jax.jit(model.apply)(variables, np.asarray(x_nchw).transpose(0, 2, 3, 1)))


FULL_DEPTH = pytest.mark.skipif(not os.environ.get("SPADE_JAX_FULL_DEPTH"),
                                reason="full ResNet-101 forward: set SPADE_JAX_FULL_DEPTH=1")
