"""Building blocks with PyTorch's exact semantics: init, padding, spectral norm, param-free norms, resizing.

Everything here is NHWC. Each function documents the PyTorch behaviour it reproduces, because bit-level parity with
the official SPADE checkpoints depends on these details (see docs/spade_reference.md §9, §10, §15).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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

  On the CPU backend the gradients are `_cpu_conv`'s (XLA:CPU's own weight gradients are pathological for some
  shapes); other backends keep XLA's convolution and its gradients. Same numbers either way, to float32 rounding.
  """
  kernel = kernel.astype(x.dtype)
  if jax.default_backend() == "cpu":
    y = _cpu_conv(x, kernel, stride, padding, conv_method(x.shape, kernel.shape, stride, padding))
  else:
    y = _xla_conv(x, kernel, stride, padding)
  return y if bias is None else add_bias(y, bias)


def _xla_conv(x, kernel, stride: int, padding: int):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_method(x_shape, kernel_shape, stride: int, padding: int) -> tuple[str, str]:
  """How `_cpu_conv` computes (input gradient, weight gradient).

  Input gradient: 'xla' (XLA's transposed convolution) or 'cols' (`conv_input_grad`: one matmul with the kernel as
  the left operand, then col2im). Weight gradient: 'xla' (XLA's, of the explicitly padded input) or 'taps'
  (`conv_weight_grad`: one matmul per kernel tap).

  Timed both ways on every convolution of a train step (`python bench/conv_sweep.py`, 2-core x86-64, jax 0.12,
  with `parallel.compiler_options()`; XLA:CPU's default YNNPACK convolutions need other rules, see there):
  - explicit padding removes XLA:CPU's worst case, a padded convolution whose output is larger than its input (the
    discriminator's 4x4 stride-1 convs with padding 2: 256->512 channels at 33x33, batch 2, 10.8 s -> 0.05 s);
  - XLA's input gradient flips and transposes the whole kernel before its convolution: where the kernel is large
    beside the image (1024->1024 channels at 16x16: 0.055 s, forward 0.015 s; at 8x8 0.050 s) the 'cols' form is
    as fast as the forward (0.017 s; 0.008 s); from about cout / 2 output pixels on XLA's is faster (1024->512 at
    32x32: 0.035 s, cols 0.059 s);
  - XLA's weight gradient is as fast as or faster than the taps for every k > 1 stride-1 convolution of the models
    (128->256 at 256x256: 0.14 s, taps 0.28 s); for 1x1 convolutions the taps are one matmul (128->64 at 256x256:
    0.028 s -> 0.005 s); and at stride 2 (the discriminator's 4x4 convs) the taps won at every shape (Xeon, AVX-512:
    its label map 184->64 at 256x256 0.115 s -> 0.070 s, at 128x128 0.028 s -> 0.010 s; 64->128 at 129x129
    0.011 s -> 0.005 s).
  """
  k, cout = kernel_shape[0], kernel_shape[-1]
  dx = "cols" if k > 1 and 2 * _output_pixels(x_shape, k, stride, padding) <= cout else "xla"
  dw = "taps" if k == 1 or stride > 1 else "xla"
  return dx, dw


def _output_pixels(x_shape, k: int, stride: int, padding: int) -> int:
  """Batch x output height x output width of a k x k convolution of an NHWC `x_shape`."""
  n, h, w = x_shape[:3]
  return n * ((h + 2 * padding - k) // stride + 1) * ((w + 2 * padding - k) // stride + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _cpu_conv(x, kernel, stride: int, padding: int, method: tuple[str, str]):
  """XLA's padded convolution; its gradients as `method` = (input gradient, weight gradient) says."""
  return _xla_conv(x, kernel, stride, padding)


def _cpu_conv_fwd(x, kernel, stride, padding, method):
  return _xla_conv(x, kernel, stride, padding), (x, kernel)


def _cpu_conv_bwd(stride, padding, method, res, g):
  # The barrier makes the weight gradient read the stored input: left alone, XLA fuses the input's producer (e.g.
  # the sum of SPADE's label-conv gathers) into the transposed copy of it that the gradient takes, and recomputes
  # it there in a cache-hostile order (0.7 s of thread time per SPADE at 256x256, instead of a plain copy).
  x, kernel = jax.lax.optimization_barrier(res)
  dx_method, dw_method = method
  if dx_method == "cols":
    dx = conv_input_grad(g, kernel, x.shape, stride, padding)
  else:
    dx = jax.vjp(lambda x: _xla_conv(x, kernel, stride, padding), x)[1](g)[0]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x
  if dw_method == "taps":
    dw = conv_weight_grad(xp, g, kernel.shape[0], stride)
  else:
    dw = jax.vjp(lambda w: _xla_conv(xp, w, stride, 0), kernel)[1](g)[0]
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv_input_grad(g, kernel, x_shape, stride: int, padding: int):
  """d(conv of x)/dx contracted with the output cotangent g, as columns then col2im: C[tap, cin, pixel] =
  kernel (k*k*cin, cout) . g (pixels, cout)^T in one matmul (the kernel, as stored, is its left operand: no
  transposed copy of it), then each tap's (cin, pixel) block is added into the padded input gradient at its offset
  (interior padding places strided outputs), and the padding is cut off."""
  n, ho, wo, cout = g.shape
  k, _, cin, _ = kernel.shape
  _, h, w, _ = x_shape
  hp, wp = h + 2 * padding, w + 2 * padding
  cols = jnp.einsum("ko,po->kp", kernel.reshape(k * k * cin, cout), g.reshape(n * ho * wo, cout),
                    preferred_element_type=_stats_dtype(g)).reshape(k, k, cin, n, ho, wo)
  zero = jnp.zeros((), cols.dtype)
  dxp = None
  for i in range(k):
    for j in range(k):
      tap = cols[i, j].transpose(1, 2, 3, 0)  # (n, ho, wo, cin)
      span_h, span_w = (ho - 1) * stride + 1, (wo - 1) * stride + 1
      tap = jax.lax.pad(tap, zero, [(0, 0, 0), (i, hp - i - span_h, stride - 1), (j, wp - j - span_w, stride - 1),
                                    (0, 0, 0)])
      dxp = tap if dxp is None else dxp + tap
  return dxp[:, padding:padding + h, padding:padding + w]


def conv_weight_grad(x, g, k: int, stride: int = 1):
  """d(VALID conv of x)/d(kernel) contracted with the output cotangent g: for each tap (i, j) of the k x k kernel,
  dW[i, j] = sum over batch and output pixels of x[p * stride + (i, j)] outer g[p]: one (Cout, L) x (L, Cin)
  matmul per tap, accumulated in at least float32.

  At stride 1 each tap's input pixels are a contiguous window of the flattened image when g is zero-padded to the
  input's width (the padded columns contribute nothing), so no strided copy of x is made per tap.
  """
  n, ho, wo, cout = g.shape
  _, hp, wp, cin = x.shape
  dot = lambda gt, xs: jnp.einsum("nol,nlc->oc", gt, xs, preferred_element_type=_stats_dtype(x))
  taps = []
  if stride == 1:
    g_t = jnp.pad(g, ((0, 0), (0, 0), (0, wp - wo), (0, 0))).reshape(n, ho * wp, cout).transpose(0, 2, 1)
    x_flat = jnp.pad(x.reshape(n, hp * wp, cin), ((0, 0), (0, k), (0, 0)))  # windows may run k past the end
    for i in range(k):
      for j in range(k):
        taps.append(dot(g_t, x_flat[:, i * wp + j:i * wp + j + ho * wp]))
  else:
    g_t = g.reshape(n, ho * wo, cout).transpose(0, 2, 1)
    for i in range(k):
      for j in range(k):
        xs = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
        taps.append(dot(g_t, xs.reshape(n, ho * wo, cin)))
  return jnp.stack(taps).reshape(k, k, cout, cin).transpose(0, 1, 3, 2)


def onehot_conv2d(ids, kernel, padding: int):
  """conv2d(one_hot(ids, K), kernel[:, :, :K]) at stride 1, as a sum of k*k row gathers instead of a convolution.

  A convolution over a one-hot map multiplies K - 1 zeros per tap; here each output pixel adds the kernel rows of the
  classes under its k*k taps (out-of-image taps index an all-zero row, which is the zero padding). The result is the
  same sum in another order (fp32 rounding), and the gradient w.r.t. the kernel is a scatter-add of the output
  gradient into those rows: no dense weight gradient over K input channels either.
  """
  k, _, num_classes, cout = kernel.shape
  table = jnp.concatenate([kernel, jnp.zeros((k, k, 1, cout), kernel.dtype)], axis=2)  # row K: padding
  ids = jnp.pad(ids, ((0, 0), (padding, padding), (padding, padding)), constant_values=num_classes)
  h, w = ids.shape[1] - k + 1, ids.shape[2] - k + 1
  out = None
  for dy in range(k):
    for dx in range(k):
      rows = jnp.take(table[dy, dx], ids[:, dy:dy + h, dx:dx + w], axis=0)
      out = rows if out is None else out + rows
  return out


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

    A part with fewer rows than the others (a divisor of their number) stands for itself repeated along the batch,
    [p; p; ...]: it is convolved once and its output repeated. The discriminator's [fake; real] step shares one
    label map this way instead of convolving (and differentiating) two copies of it.
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
    out_size = _output_pixels((rows, *parts[0].shape[1:]), k, self.stride, self.padding)
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
        part = jnp.tile(part, (rows // p.shape[0], 1, 1, 1))
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


def _stats_dtype(x):
  """Normalisation statistics in at least float32, also when activations are bfloat16."""
  return jnp.promote_types(x.dtype, jnp.float32)


def at_least_float32(x):
  """bfloat16 -> float32 for losses and sums; float32 and float64 (the exactness tests) stay as they are."""
  return x.astype(_stats_dtype(x))


HALVING_STOP = 1 << 16  # elements left to XLA's own reduction (at ~3.5 ns each on XLA:CPU, 0.2 ms)


def _halving_sum(y):
  """(B, R, C) -> (B, C): sum over R by adding contiguous halves (zero-padded when odd) while more than
  HALVING_STOP elements are left, then XLA's sum. Each level is ~3 more HLO ops to compile: halving to the end
  doubled the COCO-Stuff step's compile time (19.9 -> 38.4 s), stopping there costs 3 s of it."""
  while y.shape[1] > 1 and y.size > HALVING_STOP:
    if y.shape[1] % 2:
      y = jnp.pad(y, ((0, 0), (0, 1), (0, 0)))
    half = y.shape[1] // 2
    y = y[:, :half] + y[:, half:]
  return y.sum(axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def pixel_sum(x, per_sample: bool = False):
  """Sum of an NHWC array over its pixels: (C,) over N, H, W, or (N, C) over H, W with `per_sample`.

  The per-channel sums of batch and instance norms and of bias gradients. XLA:CPU rewrites such a sum into 32x32
  reduce-windows that read one channel at a time, 4 KB apart (a 64x64x1024 sum: 15 ms); halving the pixel rows
  instead reads whole rows of channels (1.4 ms) and is a pairwise tree too (float32 error vs float64 1e-7, XLA's
  8e-7). Each sample is summed apart first, so a batch sharded over devices is summed where it lies. Other
  backends keep XLA's reduction. The gradient is a broadcast, as for jnp.sum.
  """
  if jax.default_backend() != "cpu":
    return x.sum(axis=(1, 2) if per_sample else (0, 1, 2))
  sums = _halving_sum(x.reshape(x.shape[0], -1, x.shape[-1]))
  return sums if per_sample else sums.sum(axis=0)


def _pixel_sum_fwd(x, per_sample):
  return pixel_sum(x, per_sample), jax.ShapeDtypeStruct(x.shape, x.dtype)


def _pixel_sum_bwd(per_sample, x, g):
  return (pixel_broadcast(g, x.shape).astype(x.dtype),)


pixel_sum.defvjp(_pixel_sum_fwd, _pixel_sum_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def pixel_broadcast(v, shape):
  """A per-channel (C,) or per-sample-and-channel (N, C) array broadcast over an NHWC `shape`; its gradient is
  `pixel_sum` (where jnp's broadcasting would leave XLA:CPU's slow reduction), in at least float32."""
  return jnp.broadcast_to(v[:, None, None] if v.ndim == 2 else v, shape)


def _pixel_broadcast_fwd(v, shape):
  return pixel_broadcast(v, shape), jax.ShapeDtypeStruct(v.shape, v.dtype)


def _pixel_broadcast_bwd(shape, v, g):
  return (pixel_sum(at_least_float32(g), v.ndim == 2).astype(v.dtype),)


pixel_broadcast.defvjp(_pixel_broadcast_fwd, _pixel_broadcast_bwd)


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
