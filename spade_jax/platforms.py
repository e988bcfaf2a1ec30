"""What each platform runs: the formulations chosen per platform, in one place.

The models (spade_jax/models) say what is computed, as the paper and the official code do; this module says how,
where a platform needs its own way. Every choice follows the platform a program is compiled *for*, never the host's
default backend, so a TPU or GPU program compiled ahead of time on a CPU host (`python -m spade_jax.aot`), or by a
process whose default backend is another, is the program that a TPU or GPU host builds:

- inside a computation, by `jax.lax.platform_dependent`, resolved when the program is lowered for its devices;
- where the choice is structural (the SPADE label convolution's form, compiler options), by the platform of the
  mesh or device the program is built for (`platform_of`).

| what | CPU | GPU, TPU |
|---|---|---|
| convolution gradients | `_cpu_conv_grads` (`conv_method`: per-tap matmuls, columns, explicit padding) | XLA's |
| per-channel pixel sums | halving tree over pixel rows (`pixel_sum`) | XLA's reduction |
| SPADE's label conv (`model.spade_label_conv=auto`) | kernel-row gathers (`onehot_conv2d`) | a convolution |
| compiler options | YNNPACK fusions off (`CPU_COMPILER_OPTIONS`) | XLA's defaults |

Each CPU form computes the same numbers as XLA's, to float32 rounding; the README's CPU speed section has the
measurements behind each.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import logging

from spade_jax.errors import UserError

__all__ = ["platform_of", "compiler_options", "label_conv_kind", "conv", "pixel_sum", "pixel_broadcast",
           "onehot_conv2d", "LABEL_CONVS"]

LABEL_CONVS = ("auto", "dense", "gather")


def platform_of(where=None) -> str:
  """'cpu', 'gpu' or 'tpu': the platform of a mesh, a device, a sequence of devices, or (None) the default device,
  which is where a jitted program without shardings runs."""
  if where is None:
    return jax.devices()[0].platform
  if isinstance(where, jax.sharding.Mesh):
    where = where.devices.flat[0]
  elif not isinstance(where, jax.Device):
    where = next(iter(where))
  return where.platform


def accum_dtype(x):
  """At least float32: sums, statistics and gradients accumulate so also when activations are bfloat16."""
  return jnp.promote_types(x.dtype, jnp.float32)


# ---- compiler options --------------------------------------------------------------------------------------------

# XLA:CPU (jax 0.12) hands convolutions to YNNPACK "library fusions" by default; YNNPACK's convolution weight
# gradients are up to 5x slower than XLA's own Eigen kernels (128->256 channels, 3x3, at 256x256: 0.72 s vs 0.14 s;
# forward and input gradients as fast). An empty list turns every library fusion off (YNNPACK's reductions alone,
# LIBRARY_FUSION_TYPE_REDUCE, measured no faster over a whole step, and change XLA's summation order). Measured by
# `python bench/conv_sweep.py` against `--xla_defaults`.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_accepts_options() -> bool:
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    arg = jax.ShapeDtypeStruct((), jnp.float32, sharding=cpu)
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(arg).compile()
  except Exception as e:  # an unknown option or value in another jaxlib: keep XLA's defaults
    logging.warning("XLA:CPU did not accept %s (%s); convolution weight gradients may be slower",
                    CPU_COMPILER_OPTIONS, str(e).splitlines()[0])
    return False
  return True


def compiler_options(platform: str | None = None) -> dict | None:
  """`jax.jit(..., compiler_options=...)` for the programs that run the SPADE networks (train step, synthesis) on
  `platform` (None: the default device's): CPU_COMPILER_OPTIONS for 'cpu' when this jaxlib accepts them, else None
  (XLA's defaults). Per program, not XLA_FLAGS, so that nothing else in the process changes."""
  platform = platform or platform_of()
  return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" and _cpu_accepts_options() else None


# XLA:CPU's optimising compile of a program of many random initialisers (each parameter's own draw) is slow and buys
# nothing for a program run once: the demo's init compiled in 48.6 s with XLA's defaults and 15.2 s with these on a
# quiet 2-core CPU (`python bench/init_compile.py`; the values agree to 9e-8, and the same options everywhere keep the
# initialisation the same in every run).
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_compiler_options(platform: str | None = None) -> dict | None:
  """`compiler_options` for a run-once initialisation program on `platform`: FAST_COMPILE_OPTIONS on CPU (when this
  jaxlib accepts its options), else None. Also None under `jax_disable_most_optimizations` (the tests), which
  already compiles fast: there the two together measured slower (17.3 s against 15.8 s for the tiny test config)."""
  platform = platform or platform_of()
  if platform != "cpu" or jax.config.read("jax_disable_most_optimizations"):
    return None
  return dict(FAST_COMPILE_OPTIONS) if _cpu_accepts_options() else None


# ---- SPADE's label convolution -----------------------------------------------------------------------------------

def label_conv_kind(config, platform: str | None = None) -> str:
  """model.spade_label_conv with 'auto' resolved for `platform` (None: the default device's): 'gather' on CPU,
  where it measured faster in training and inference (README, "On CPU"), 'dense' (a convolution) on GPU and TPU."""
  kind = str(config.model.spade_label_conv)
  if kind not in LABEL_CONVS:
    raise UserError(f"config.model.spade_label_conv must be one of {LABEL_CONVS}, got {kind!r}")
  if kind == "auto":
    kind = "gather" if (platform or platform_of()) == "cpu" else "dense"
  return kind


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


# ---- convolutions ------------------------------------------------------------------------------------------------

def xla_conv(x, kernel, stride: int, padding: int):
  """torch's Conv2d (explicit symmetric zero padding), NHWC x HWIO."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, stride: int, padding: int):
  """XLA's convolution; its gradients are XLA's, or on CPU `_cpu_conv_grads` (XLA:CPU's own are pathological for
  some shapes). Same numbers either way, to float32 rounding."""
  return xla_conv(x, kernel, stride, padding)


def _conv_fwd(x, kernel, stride, padding):
  return xla_conv(x, kernel, stride, padding), (x, kernel)


def _xla_conv_grads(x, kernel, g, stride, padding):
  return jax.vjp(lambda x, w: xla_conv(x, w, stride, padding), x, kernel)[1](g)


def _conv_bwd(stride, padding, res, g):
  x, kernel = res
  cpu = functools.partial(_cpu_conv_grads, stride=stride, padding=padding,
                          method=conv_method(x.shape, kernel.shape, stride, padding))
  return jax.lax.platform_dependent(x, kernel, g, cpu=cpu,
                                    default=functools.partial(_xla_conv_grads, stride=stride, padding=padding))


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_method(x_shape, kernel_shape, stride: int, padding: int) -> tuple[str, str]:
  """How `_cpu_conv_grads` computes (input gradient, weight gradient).

  Input gradient: 'xla' (XLA's transposed convolution) or 'cols' (`conv_input_grad`: one matmul with the kernel as
  the left operand, then col2im). Weight gradient: 'xla' (XLA's, of the explicitly padded input) or 'taps'
  (`conv_weight_grad`: one matmul per kernel tap).

  Timed both ways on every convolution of a train step (`python bench/conv_sweep.py`, 2-core x86-64, jax 0.12,
  with `compiler_options('cpu')`; XLA:CPU's default YNNPACK convolutions need other rules, see there):
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
  dx = "cols" if k > 1 and 2 * output_pixels(x_shape, k, stride, padding) <= cout else "xla"
  dw = "taps" if k == 1 or stride > 1 else "xla"
  return dx, dw


def output_pixels(x_shape, k: int, stride: int, padding: int) -> int:
  """Batch x output height x output width of a k x k convolution of an NHWC `x_shape`."""
  n, h, w = x_shape[:3]
  return n * ((h + 2 * padding - k) // stride + 1) * ((w + 2 * padding - k) // stride + 1)


def _cpu_conv_grads(x, kernel, g, stride: int, padding: int, method: tuple[str, str]):
  # The barrier makes the weight gradient read the stored input: left alone, XLA fuses the input's producer (e.g.
  # the sum of SPADE's label-conv gathers) into the transposed copy of it that the gradient takes, and recomputes
  # it there in a cache-hostile order (0.7 s of thread time per SPADE at 256x256, instead of a plain copy).
  x, kernel = jax.lax.optimization_barrier((x, kernel))
  dx_method, dw_method = method
  if dx_method == "cols":
    dx = conv_input_grad(g, kernel, x.shape, stride, padding)
  else:
    dx = jax.vjp(lambda x: xla_conv(x, kernel, stride, padding), x)[1](g)[0]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x
  if dw_method == "taps":
    dw = conv_weight_grad(xp, g, kernel.shape[0], stride)
  else:
    dw = jax.vjp(lambda w: xla_conv(xp, w, stride, 0), kernel)[1](g)[0]
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


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
                    preferred_element_type=accum_dtype(g)).reshape(k, k, cin, n, ho, wo)
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
  dot = lambda gt, xs: jnp.einsum("nol,nlc->oc", gt, xs, preferred_element_type=accum_dtype(x))
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


# ---- per-channel pixel sums --------------------------------------------------------------------------------------

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


def _cpu_pixel_sum(x, per_sample: bool):
  sums = _halving_sum(x.reshape(x.shape[0], -1, x.shape[-1]))
  return sums if per_sample else sums.sum(axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def pixel_sum(x, per_sample: bool = False):
  """Sum of an NHWC array over its pixels: (C,) over N, H, W, or (N, C) over H, W with `per_sample`.

  The per-channel sums of batch and instance norms and of bias gradients. XLA:CPU rewrites such a sum into 32x32
  reduce-windows that read one channel at a time, 4 KB apart (a 64x64x1024 sum: 15 ms); halving the pixel rows
  instead reads whole rows of channels (1.4 ms) and is a pairwise tree too (float32 error vs float64 1e-7, XLA's
  8e-7). Each sample is summed apart first, so a batch sharded over devices is summed where it lies. Other
  platforms keep XLA's reduction. The gradient is a broadcast, as for jnp.sum.
  """
  return jax.lax.platform_dependent(
      x, cpu=functools.partial(_cpu_pixel_sum, per_sample=per_sample),
      default=lambda x: x.sum(axis=(1, 2) if per_sample else (0, 1, 2)))


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
  return (pixel_sum(g.astype(accum_dtype(g)), v.ndim == 2).astype(v.dtype),)


pixel_broadcast.defvjp(_pixel_broadcast_fwd, _pixel_broadcast_bwd)
