"""Building blocks with PyTorch's exact semantics: init, padding, spectral norm, param-free norms, resizing.

Everything here is NHWC. Each function documents the PyTorch behaviour it reproduces, because bit-level parity with
the official SPADE checkpoints depends on these details (see docs/spade_reference.md §9, §10, §15).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spade_jax import platforms
from spade_jax.platforms import pixel_broadcast, pixel_sum

# Official init: xavier_normal_(gain=0.02) on every conv and linear weight, zero bias (BaseNetwork.init_weights).
INIT_GAIN = 0.02
SN_EPS = 1e-12  # torch.nn.utils.spectral_norm default
NORM_EPS = 1e-5  # torch BatchNorm2d / InstanceNorm2d default
BN_MOMENTUM = 0.1  # torch convention: running = (1 - m) * running + m * batch
LRELU_SLOPE = 0.2


def xavier_normal(gain: float = INIT_GAIN):
  """xavier_normal_ with gain: std = gain * sqrt(2 / (fan_in + fan_out)), untruncated, as torch."""
  return nn.initializers.variance_scaling(gain**2, "fan_avg", "normal")


def leaky_relu(x):
  return jax.nn.leaky_relu(x, LRELU_SLOPE)


def _l2_normalize(x):
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x), SN_EPS)


def conv2d(x, kernel, bias=None, stride: int = 1, padding: int = 0):
  """torch's Conv2d forward (explicit symmetric zero padding), computed in x's dtype (float32 weights are cast).
  Its gradients are the platform's (`platforms.conv`)."""
  y = platforms.conv(x, kernel.astype(x.dtype), stride, padding)
  return y if bias is None else add_bias(y, bias)


class ConvParams(nn.Module):
  """The `kernel` (and `bias`) of a Conv2d, created with the same names and init but not applied, so that several
  convs can run as one (SPADE's gamma and beta) while the variables keep the official layout."""
  features: int
  kernel_size: int
  in_features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self):
    k = self.kernel_size
    kernel = self.param("kernel", xavier_normal(), (k, k, self.in_features, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
    return kernel, bias


class Conv2d(nn.Module):
  """Conv with torch's explicit zero padding and, optionally, torch's spectral normalisation.

  Spectral norm follows torch.nn.utils.spectral_norm (not flax's SpectralNorm): the raw weight is the parameter
  `kernel`; vectors `u` (out) and `v` (in*kh*kw) live in the `spectral` collection. In training each call runs one
  power iteration and stores the new u, v; in eval sigma = u.W.v from the stored vectors with no iteration. flax's
  SpectralNorm always iterates and stores no v, so it cannot reproduce an official checkpoint's eval output.
  `v` is stored in this kernel's flattening order (kh, kw, in); the converter permutes torch's (in, kh, kw) order.
  The power iteration and sigma stay in float32 whatever the compute dtype.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  spectral: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    """`x` may be a tuple of arrays that stand for their concatenation along channels: the conv is then the sum of
    a conv per part with its slice of the kernel (same variables), and the backward pass computes input gradients
    only for the parts that need them (the discriminator's image, not its one-hot label map).

    A part with fewer rows than the others (a divisor of their number) stands for each of its rows repeated in
    place, [p0, p0, p1, p1, ...]: it is convolved once and each output row repeated. The discriminator's step on
    fake and real rows interleaved ([f0, r0, f1, r1, ...]) shares one label map this way instead of convolving (and
    differentiating) two copies of it. Repeating rows in place keeps every row on the device that holds its
    source row when the batch is sharded (tiling [p; p] would move half of them to other devices).
    """
    parts = x if isinstance(x, tuple) else (x,)
    k, cin = self.kernel_size, sum(p.shape[-1] for p in parts)
    rows = max(p.shape[0] for p in parts)
    for p in parts:
      if rows % p.shape[0]:
        raise ValueError(f"Conv2d parts must have batch sizes that divide the largest ({rows}); got "
                         f"{[q.shape for q in parts]}")
    kernel = self.param("kernel", xavier_normal(), (k, k, cin, self.features), jnp.float32)
    sigma = self._spectral_sigma(kernel, train) if self.spectral else None
    out_size = platforms.output_pixels((rows, *parts[0].shape[1:]), k, self.stride, self.padding)
    # conv(x, W / sigma) = conv(x, W) / sigma: divide whichever is smaller, the kernel or the output (at 16x16 the
    # 1024-channel blocks' kernels are 36x their outputs: a 37 MB copy of the kernel per call, and as many in the
    # backward pass, for nothing)
    scale_output = sigma is not None and out_size * self.features < kernel.size
    if sigma is not None and not scale_output:
      kernel = kernel / sigma
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
    y, start = None, 0
    for p in parts:
      part = conv2d(p, kernel[:, :, start:start + p.shape[-1]], stride=self.stride, padding=self.padding)
      if p.shape[0] < rows:
        part = jnp.repeat(part, rows // p.shape[0], axis=0)
      y, start = part if y is None else y + part, start + p.shape[-1]
    if scale_output:
      y = y / sigma.astype(y.dtype)
    return y if bias is None else add_bias(y, bias)

  def _spectral_sigma(self, kernel, train):
    """sigma = u.W.v after this call's power iteration (train) or from the stored vectors (eval).
    torch's W is (out, kh*kw*in); ours is its transpose, used as stored (a transposed copy of a 1024x9216
    kernel costs more than the matrix-vector products): W^T u = w_t @ u, W v = v @ w_t."""
    w_t = kernel.reshape(-1, self.features)  # (kh*kw*in, out)
    init_u = lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (w_t.shape[1],)))
    init_v = lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (w_t.shape[0],)))
    u = self.variable("spectral", "u", init_u)
    v = self.variable("spectral", "v", init_v)
    if train and not self.is_initializing():
      w_sg = jax.lax.stop_gradient(w_t)
      v.value = _l2_normalize(w_sg @ u.value)
      u.value = _l2_normalize(v.value @ w_sg)
    return jnp.dot(v.value @ w_t, u.value)  # gradient flows through W only, as in torch


class Dense(nn.Module):
  """Linear layer with the official init (xavier-normal gain 0.02, zero bias)."""
  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", xavier_normal(), (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


_stats_dtype = platforms.accum_dtype  # normalisation statistics in at least float32


def at_least_float32(x):
  """bfloat16 -> float32 for losses and sums; float32 and float64 (the exactness tests) stay as they are."""
  return x.astype(_stats_dtype(x))


def add_bias(y, bias):
  """y + bias over an NHWC y, with `pixel_broadcast`'s gradient."""
  return y + pixel_broadcast(bias.astype(y.dtype), y.shape)


def _standardize(x32, per_sample: bool, eps: float, pmean=lambda t: t):
  """(x - mean) / sqrt(var + eps) with the biased variance about the mean (two passes), over H, W (and N unless
  per_sample); `pmean` averages the statistics over devices under shard_map. Returns (normalised, mean, var)."""
  pixels = x32.shape[1] * x32.shape[2] * (1 if per_sample else x32.shape[0])
  mean = pmean(pixel_sum(x32, per_sample) / pixels)
  centred = x32 - pixel_broadcast(mean, x32.shape)
  var = pmean(pixel_sum(jnp.square(centred), per_sample) / pixels)
  return centred * pixel_broadcast(jax.lax.rsqrt(var + eps), x32.shape), mean, var


def instance_norm(x, eps: float = NORM_EPS):
  """InstanceNorm2d(affine=False): per sample and channel over H, W, biased variance, statistics in float32."""
  return _standardize(x.astype(_stats_dtype(x)), True, eps)[0].astype(x.dtype)


class ParamFreeNorm(nn.Module):
  """SPADE's parameter-free normalisation: 'syncbatch', 'batch' or 'instance'.

  Batch statistics are over the whole (global) batch: under `jax.jit` with a batch sharded over a mesh, XLA inserts
  the cross-device reductions itself, so 'syncbatch' needs nothing more. Under `shard_map` set `axis_name` to the
  mapped axis and the statistics are averaged explicitly (two-pass: mean first, then the centred variance).
  'batch' differs from 'syncbatch' only there: it ignores `axis_name`, giving per-device statistics like torch's
  BatchNorm2d under DataParallel. Running statistics follow torch: momentum 0.1 and the *unbiased* variance.
  """
  kind: str = "syncbatch"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    if self.kind == "instance":
      return instance_norm(x)
    if self.kind not in ("syncbatch", "batch"):
      raise ValueError(f"param-free norm must be 'syncbatch', 'batch' or 'instance', got {self.kind!r}")
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    x32 = x.astype(_stats_dtype(x))
    if train:
      sync = self.axis_name if (self.kind == "syncbatch" and not self.is_initializing()) else None
      pmean = (lambda t: jax.lax.pmean(t, sync)) if sync else (lambda t: t)
      normalized, mean, var = _standardize(x32, False, NORM_EPS, pmean)
      if not self.is_initializing():
        n = x.shape[0] * x.shape[1] * x.shape[2] * (jax.lax.psum(1, sync) if sync else 1)
        ra_mean.value = (1 - BN_MOMENTUM) * ra_mean.value + BN_MOMENTUM * mean
        ra_var.value = (1 - BN_MOMENTUM) * ra_var.value + BN_MOMENTUM * var * (n / max(n - 1, 1))
      return normalized.astype(x.dtype)
    return ((x32 - ra_mean.value) * jax.lax.rsqrt(ra_var.value + NORM_EPS)).astype(x.dtype)


def nearest_resize(x, size: Sequence[int]):
  """torch's legacy 'nearest' (F.interpolate default): source index floor(dst * in / out).

  For integer down-sampling this is the top-left pixel of each cell, not jax.image.resize's half-pixel centre rule.
  """
  h, w = x.shape[1], x.shape[2]
  oh, ow = int(size[0]), int(size[1])
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:
    return x[:, :: h // oh, :: w // ow]
  rows = (np.arange(oh) * h) // oh
  cols = (np.arange(ow) * w) // ow
  return x[:, rows][:, :, cols]


def upsample2x(x):
  """nn.Upsample(scale_factor=2), nearest: each pixel repeated 2x2."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def _bilinear_taps(n_in: int, n_out: int):
  """Source taps of torch bilinear, align_corners=False, no antialias (area_pixel_compute_source_index)."""
  scale = n_in / n_out
  src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
  i0 = np.floor(src).astype(np.int32)
  i0 = np.minimum(i0, n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = (src - i0).astype(np.float32)
  return i0, i1, w1


def bilinear_resize(x, size: Sequence[int]):
  """F.interpolate(mode='bilinear', align_corners=False) without antialiasing (jax.image.resize antialiases)."""
  h0, h1, wh = _bilinear_taps(x.shape[1], int(size[0]))
  w0, w1, ww = _bilinear_taps(x.shape[2], int(size[1]))
  wh = jnp.asarray(wh, x.dtype)[None, :, None, None]
  ww = jnp.asarray(ww, x.dtype)[None, None, :, None]
  rows = x[:, h0] * (1 - wh) + x[:, h1] * wh
  return rows[:, :, w0] * (1 - ww) + rows[:, :, w1] * ww


def avg_pool_3x3_s2(x):
  """avg_pool2d(kernel 3, stride 2, padding 1, count_include_pad=False), between discriminator scales.

  Separable: three strided row slices summed, then three column slices, divided by the count of in-image pixels
  under each window (rows x columns). XLA:CPU's reduce_window (nn.avg_pool) took 97 ms on a [fake; real] 256x256
  label map of 184 channels, more than the discriminator's first convolution of it.
  """
  n, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = sum(xp[:, i:i + 2 * ho - 1:2] for i in range(3))
  s = sum(rows[:, :, j:j + 2 * wo - 1:2] for j in range(3))

  def count(size, out):  # in-image taps of each window: the window of output i covers input rows 2i-1 .. 2i+1
    i = np.arange(out)
    return np.minimum(2 * i + 1, size - 1) - np.maximum(2 * i - 1, 0) + 1

  inv = 1.0 / (count(h, ho)[:, None] * count(w, wo)[None, :])
  return s * jnp.asarray(inv[None, :, :, None], s.dtype)
