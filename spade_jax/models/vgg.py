"""VGG19 features up to relu5_1, for the perceptual loss (weights from torchvision's vgg19-dcbb9e9d.pth)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# (torchvision `features` index, our name, out channels); max-pools follow conv1_2, conv2_2, conv3_4, conv4_4.
VGG19_CONVS = (
    (0, "conv1_1", 64), (2, "conv1_2", 64),
    (5, "conv2_1", 128), (7, "conv2_2", 128),
    (10, "conv3_1", 256), (12, "conv3_2", 256), (14, "conv3_3", 256), (16, "conv3_4", 256),
    (19, "conv4_1", 512), (21, "conv4_2", 512), (23, "conv4_3", 512), (25, "conv4_4", 512),
    (28, "conv5_1", 512),
)
OUTPUTS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")  # relu of these: the five loss slices
POOL_AFTER = ("conv1_2", "conv2_2", "conv3_4", "conv4_4")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19(nn.Module):
  """Returns [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1].

  `input_norm='official'` feeds the [-1, 1] image as is, as the official SPADE VGGLoss does; 'imagenet' maps it to
  [0, 1] and applies ImageNet mean/std, as imaginaire does (what the torchvision weights were trained on).
  """
  input_norm: str = "official"
  dtype: Any = None  # compute dtype (e.g. bfloat16); the weights stay float32

  @nn.compact
  def __call__(self, x):
    if self.dtype is not None:
      x = x.astype(self.dtype)
    if self.input_norm == "imagenet":
      x = ((x + 1) / 2 - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    elif self.input_norm != "official":
      raise ValueError(f"vgg input_norm must be 'official' or 'imagenet', got {self.input_norm!r}")
    outs = []
    for _, name, features in VGG19_CONVS:
      x = jax.nn.relu(nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name)(x))
      if name in OUTPUTS:
        outs.append(x)
      if name in POOL_AFTER:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return outs
