"""The demo segmenter's network (`SegNet`, a compact U-Net) and its initialisation. The evaluation scores the demo's
syntheses with one (spade_jax.evaluation.demo_segmenter); a second one, trained with another seed, can stand in for
VGG19 as the perceptual loss's network where no pretrained weights exist (config.loss.perceptual_net)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from spade_jax import platforms
from spade_jax.data import demo as demo_data

NUM_CLASSES = demo_data.NUM_CLASSES
CLASS_NAMES = tuple(demo_data.CLASS_NAMES)
ARCH_VERSION = "demo-unet-s2d-v1"


def _conv_block(x, features, *, stride=1, dilation=1, name):
  x = nn.Conv(features, (3, 3), strides=(stride, stride), kernel_dilation=(dilation, dilation), padding="SAME",
              use_bias=False, name=f"{name}_conv")(x)
  x = nn.GroupNorm(num_groups=min(8, max(1, features // 4)), name=f"{name}_gn")(x)
  return nn.relu(x)


def _upsample_to(x, like):
  return jax.image.resize(x, (x.shape[0],) + like.shape[1:3] + (x.shape[-1],), "bilinear")


class SegNet(nn.Module):
  """Compact U-Net: uint8 (or [0, 1] float) NHWC RGB -> (N, H, W, num_classes) float32 logits; any H, W.

  The input (RGB in [-1, 1] plus a row-coordinate channel in [-1, 1]) is folded 2x2 space-to-depth to half
  resolution (odd sizes are edge-padded). Encoder (3x3 conv + GroupNorm + ReLU): two convs of `widths[0]` at 1/2,
  a stride-2 conv and a conv of `widths[1]` at 1/4, a stride-2 conv and a dilated (2) conv of `widths[2]` at 1/8,
  then global context (the spatial mean through a dense layer, broadcast, concatenated and fused by a 1x1 conv +
  GroupNorm + ReLU: day / sunset / night is a property of the whole image). Decoder: bilinear x2 upsampling,
  concatenation with the encoder skip and a 3x3 conv per level (`decoder` widths at 1/4 and 1/2), then a 1x1 conv
  to 4 * num_classes logits per half-resolution pixel, unfolded depth-to-space to full-resolution logits.
  """
  num_classes: int = NUM_CLASSES
  widths: tuple[int, ...] = (32, 48, 64)
  decoder: tuple[int, ...] = (32, 24)
  features: bool = False  # True: images in [-1, 1] (a generator's output) -> the encoder's features at 1/2, 1/4
                          # and 1/8 (the last with the global context): the perceptual loss's layers

  @nn.compact
  def __call__(self, images):
    x = jnp.asarray(images)
    if self.features:
      x = (x.astype(jnp.float32) + 1.0) / 2.0
    else:
      x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    n, h, w, _ = x.shape
    rows = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, h, dtype=jnp.float32)[None, :, None, None], (n, h, w, 1))
    x = jnp.concatenate([x * 2.0 - 1.0, rows], -1)
    hp, wp = h + h % 2, w + w % 2
    if (hp, wp) != (h, w):
      x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    c = x.shape[-1]
    x = x.reshape(n, hp // 2, 2, wp // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // 2, wp // 2, 4 * c)
    w1, w2, w3 = self.widths
    e1 = _conv_block(_conv_block(x, w1, name="enc1a"), w1, name="enc1b")              # 1/2
    e2 = _conv_block(_conv_block(e1, w2, stride=2, name="enc2a"), w2, name="enc2b")   # 1/4
    e3 = _conv_block(_conv_block(e2, w3, stride=2, name="enc3a"), w3, dilation=2, name="enc3b")  # 1/8
    g = nn.relu(nn.Dense(w3, name="context")(e3.mean((1, 2))))
    e3 = jnp.concatenate([e3, jnp.broadcast_to(g[:, None, None, :], e3.shape)], -1)
    e3 = nn.Conv(w3, (1, 1), use_bias=False, name="fuse_conv")(e3)
    e3 = nn.relu(nn.GroupNorm(num_groups=8, name="fuse_gn")(e3))
    if self.features:
      return [e1, e2, e3]
    d2 = _conv_block(jnp.concatenate([_upsample_to(e3, e2), e2], -1), self.decoder[0], name="dec2")
    d1 = _conv_block(jnp.concatenate([_upsample_to(d2, e1), e1], -1), self.decoder[1], name="dec1")
    k = self.num_classes
    out = nn.Conv(4 * k, (1, 1), name="head")(d1)
    out = out.reshape(n, hp // 2, wp // 2, 2, 2, k).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, k)
    return out[:, :h, :w].astype(jnp.float32)


_INIT_SHAPE = (1, 16, 16, 3)


def init_variables(model: SegNet, key):
  """Freshly initialised variables (Flax default initialisers), from `key`; compiled fast (see platforms)."""
  x = jnp.zeros(_INIT_SHAPE, jnp.uint8)
  return jax.jit(model.init).lower(key, x).compile(compiler_options=platforms.FAST_COMPILE_OPTIONS)(key, x)


def variables_template(model: SegNet):
  """The variables' structure, shapes and dtypes (no computation)."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(_INIT_SHAPE, jnp.uint8))
