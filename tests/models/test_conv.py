"""platforms.conv's CPU formulations (explicit padding, columns input gradient, per-tap weight gradient) equal XLA's
convolution: forward, input gradient and weight gradient, on random shapes with odd sizes, strides 1 and 2, paddings
0-2 and kernels 1-4."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spade_jax import platforms
from spade_jax.models import layers

DIMS = ("NHWC", "HWIO", "NHWC")
CASES = [  # (n, h, w, cin, cout, k, stride, padding)
    (2, 7, 9, 3, 5, 3, 1, 1), (1, 8, 8, 4, 6, 4, 1, 2), (2, 9, 6, 5, 3, 4, 2, 2), (1, 11, 11, 2, 4, 3, 2, 1),
    (3, 5, 7, 6, 2, 1, 1, 0), (1, 6, 9, 3, 3, 2, 2, 0), (2, 10, 5, 4, 7, 3, 1, 0), (1, 13, 12, 3, 4, 4, 2, 1),
    (2, 4, 4, 5, 5, 1, 2, 0), (1, 7, 7, 2, 3, 2, 1, 2),
]


def _reference(x, w, stride, padding):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2, dimension_numbers=DIMS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}h{}w{}c{}o{}k{}s{}p{}".format(*c))
@pytest.mark.parametrize("method", [("xla", "xla"), ("cols", "taps")], ids=["xla", "cols-taps"])
def test_conv_equals_xla(case, method):
  n, h, w, cin, cout, k, stride, padding = case
  rng = np.random.default_rng(sum(case))
  x = jnp.asarray(rng.normal(size=(n, h, w, cin)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
  grads = jax.jit(lambda x, w, g: platforms._cpu_conv_grads(x, w, g, stride, padding, method))
  ref = lambda x, w: _reference(x, w, stride, padding)
  y = platforms.conv(x, kernel, stride, padding)
  y_ref, vjp_ref = jax.vjp(ref, x, kernel)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  for got, want in zip(grads(x, kernel, g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_weight_grad_in_bfloat16_accumulates_in_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 40, 40, 8)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(1, 38, 38, 4)), jnp.float32)
  want = platforms.conv_weight_grad(x, g, 3)
  got = platforms.conv_weight_grad(x.astype(jnp.bfloat16), g.astype(jnp.bfloat16), 3)
  assert got.dtype == jnp.float32
  # bf16 inputs (8 bits of mantissa), exact float32 sums of 1444 products: relative error ~ 2^-8, not sqrt(1444) x
  np.testing.assert_allclose(got, want, rtol=0, atol=0.02 * float(jnp.abs(want).max()))


def test_input_grad_in_bfloat16_accumulates_in_float32():
  rng = np.random.default_rng(1)
  g = jnp.asarray(rng.normal(size=(1, 6, 6, 512)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 8, 512)), jnp.float32)
  want = platforms.conv_input_grad(g, kernel, (1, 6, 6, 8), 1, 1)
  got = platforms.conv_input_grad(g.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 6, 6, 8), 1, 1)
  np.testing.assert_allclose(got, want, rtol=0, atol=0.02 * float(jnp.abs(want).max()))


def test_conv2d_uses_the_rule_on_cpu_and_xla_elsewhere():
  rule = platforms.conv_method
  assert rule((1, 256, 256, 128), (3, 3, 128, 256), 1, 1) == ("xla", "xla")
  assert rule((1, 16, 16, 1024), (3, 3, 1024, 1024), 1, 1) == ("cols", "xla")  # 256 pixels, 1024 outputs
  assert rule((1, 8, 8, 128), (3, 3, 128, 2048), 1, 1) == ("cols", "xla")
  assert rule((1, 32, 32, 1024), (3, 3, 1024, 512), 1, 1) == ("xla", "xla")
  assert rule((1, 32, 32, 1024), (1, 1, 1024, 512), 1, 0) == ("xla", "taps")
  assert rule((2, 256, 256, 187), (4, 4, 187, 64), 2, 2) == ("xla", "taps")  # stride 2: per-tap matmuls
  x = jnp.ones((1, 4, 4, 2))

  def program(w, platform):  # the gradient program as lowered for `platform`, whatever this host's backend
    grad = jax.jit(jax.grad(lambda x, w: layers.conv2d(x, w, padding=1).sum(), (0, 1)))
    return grad.trace(x, w).lower(lowering_platforms=(platform,)).as_text()

  assert program(jnp.ones((1, 1, 2, 8)), "cpu").count("dot_general") == 1  # 1x1: the weight gradient is one matmul
  assert program(jnp.ones((3, 3, 2, 32)), "cpu").count("dot_general") == 1  # 16 pixels, 32 outputs: columns
  assert program(jnp.ones((3, 3, 2, 6)), "cpu").count("dot_general") == 0  # XLA's own gradients
  for platform in ("tpu", "cuda"):  # XLA's convolutions and their gradients, never the CPU forms
    text = program(jnp.ones((1, 1, 2, 8)), platform)
    assert text.count("dot_general") == 0 and text.count("stablehlo.convolution") == 2, platform  # dx, dw
