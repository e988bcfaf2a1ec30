"""The ResNet pieces of the evaluation's segmentation networks (DeepLabV2, DRN-D-105, UperNet-101), in one place.

The three trunks are stacks of the same bottleneck with frozen BatchNorm (eps 1e-5, running statistics); they
differ only in where the stride sits (deeplab-pytorch's Caffe ResNet: the first 1x1 conv; torchvision, fyu/drn and
mit-semseg: the 3x3 conv), in dilation, and in their torch key names, which each network's converter maps onto the
one Flax layout here: `<layer>/block{b}/{conv1,bn1,conv2,bn2,conv3,bn3[,downsample_conv,downsample_bn]}`.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

__all__ = ["conv", "bn", "ConvBN", "Bottleneck", "ResLayer", "torchvision_block_path"]


def conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, bias: bool = False, name=None) -> nn.Conv:
  """Square conv padded like the torch originals (dilation * (kernel // 2) on each side), no bias by default."""
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), kernel_dilation=(dilation, dilation),
                 padding=((pad, pad), (pad, pad)), use_bias=bias, name=name)


def bn(name=None) -> nn.BatchNorm:
  """Frozen BatchNorm2d (torch's default eps 1e-5, running statistics)."""
  return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)


class ConvBN(nn.Module):
  """conv + BN (+ ReLU) as one module with children `conv` / `bn`: deeplab-pytorch's `_ConvBnReLU`, mit-semseg's
  `Sequential(Conv2d, BatchNorm2d, ReLU)`."""
  features: int
  kernel: int
  stride: int = 1
  dilation: int = 1
  relu: bool = True

  @nn.compact
  def __call__(self, x):
    x = bn("bn")(conv(self.features, self.kernel, self.stride, self.dilation, name="conv")(x))
    return nn.relu(x) if self.relu else x


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (dilated) -> 1x1 to 4 * planes, plus the identity or a 1x1 conv + BN projection as shortcut.

  `stride_in_1x1`: the stride sits in the first 1x1 conv (Caffe / deeplab-pytorch), not in the 3x3 (torchvision).
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x):
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    out = nn.relu(bn("bn1")(conv(self.planes, 1, s1, name="conv1")(x)))
    out = nn.relu(bn("bn2")(conv(self.planes, 3, s3, self.dilation, name="conv2")(out)))
    out = bn("bn3")(conv(self.planes * 4, 1, name="conv3")(out))
    if self.downsample:
      x = bn("downsample_bn")(conv(self.planes * 4, 1, self.stride, name="downsample_conv")(x))
    return nn.relu(out + x)


class ResLayer(nn.Module):
  """`n` bottlenecks `block0..`: the first carries the stride and projects the shortcut when the shape changes
  (torchvision's `_make_layer`; deeplab-pytorch projects in every first block, the same for its channel plan)."""
  planes: int
  n: int
  stride: int = 1
  dilation: int = 1
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x):
    for b in range(self.n):
      down = b == 0 and (self.stride != 1 or x.shape[-1] != self.planes * 4)
      x = Bottleneck(self.planes, self.stride if b == 0 else 1, self.dilation, down, self.stride_in_1x1,
                     name=f"block{b}")(x)
    return x


def torchvision_block_path(fields: Sequence[str]) -> tuple:
  """Key fields of a torchvision-style block after its index (`conv2`, `downsample.1`) -> its Flax names."""
  if fields[0] == "downsample":
    return (("downsample_conv", "downsample_bn")[int(fields[1])],)
  return (fields[0],)
