"""platforms.pixel_sum / pixel_broadcast (the per-channel sums of batch norm, instance norm and bias gradients): the
halving tree equals float64 sums (odd row counts, batch and per-sample), is at least as accurate as XLA's sum, has
jnp's gradients, and gives the same result on a batch sharded over 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from spade_jax import platforms
from spade_jax.models import layers

# > HALVING_STOP elements, so the halving runs (with odd row counts on the way: 33 * 65 = 2145 rows per sample)
SHAPE = (4, 33, 65, 40)


def _data(shape=SHAPE, seed=0):
  return np.random.default_rng(seed).normal(3.0, 2.0, size=shape).astype(np.float32)


def test_halving_runs_on_this_shape():
  assert SHAPE[1] * SHAPE[2] * SHAPE[3] > platforms.HALVING_STOP


@pytest.mark.parametrize("per_sample", [False, True], ids=["batch", "per_sample"])
def test_pixel_sum_equals_float64_sum(per_sample):
  x = _data()
  axes = (1, 2) if per_sample else (0, 1, 2)
  want = x.astype(np.float64).sum(axis=axes)
  got = np.asarray(jax.jit(platforms.pixel_sum, static_argnums=1)(jnp.asarray(x), per_sample), np.float64)
  assert got.shape == want.shape
  err = np.max(np.abs(got - want) / np.abs(want))
  xla_err = np.max(np.abs(np.asarray(jnp.sum(jnp.asarray(x), axis=axes), np.float64) - want) / np.abs(want))
  assert err < 1e-6
  assert err <= 2 * xla_err + 1e-7  # a pairwise tree: no less accurate than XLA's own reduction


@pytest.mark.parametrize("per_sample", [False, True], ids=["batch", "per_sample"])
def test_gradients_equal_jnp(per_sample):
  x = jnp.asarray(_data(seed=1))
  axes = (1, 2) if per_sample else (0, 1, 2)
  w = jnp.asarray(_data(SHAPE[:1] + SHAPE[3:] if per_sample else SHAPE[3:], seed=2))
  got = jax.grad(lambda x: jnp.sum(platforms.pixel_sum(x, per_sample) * w))(x)
  want = jax.grad(lambda x: jnp.sum(jnp.sum(x, axis=axes) * w))(x)
  np.testing.assert_array_equal(got, want)
  # pixel_broadcast: the forward is a broadcast, the gradient a pixel_sum of the cotangent
  g = jnp.asarray(_data(seed=3))
  shape = SHAPE[:1] + (1, 1) + SHAPE[3:] if per_sample else SHAPE[3:]
  y, vjp = jax.vjp(lambda v: platforms.pixel_broadcast(v, SHAPE), w)
  np.testing.assert_array_equal(y, jnp.broadcast_to(w.reshape(shape), SHAPE))
  np.testing.assert_allclose(vjp(g)[0], np.asarray(g, np.float64).sum(axis=axes), rtol=1e-6)


def test_norms_and_bias_equal_plain_formulas():
  x = jnp.asarray(_data(seed=4))
  b = jnp.asarray(_data(SHAPE[3:], seed=5))
  g = jnp.asarray(_data(seed=6))

  def plain_instance(x):
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(axis=(1, 2), keepdims=True) + layers.NORM_EPS)

  for ours, plain in [(layers.instance_norm, plain_instance),
                      (lambda x: layers.add_bias(x, b), lambda x: x + b)]:
    y, vjp = jax.vjp(ours, x)
    y_ref, vjp_ref = jax.vjp(plain, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-4, atol=1e-4)
  db = jax.grad(lambda b: jnp.sum(layers.add_bias(x, b) * g))(b)
  np.testing.assert_allclose(db, np.asarray(g, np.float64).sum(axis=(0, 1, 2)), rtol=1e-5)


def test_sharded_batch_equals_unsharded():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = _data((8,) + SHAPE[1:], seed=7)
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  fn = jax.jit(platforms.pixel_sum, static_argnums=1)
  np.testing.assert_allclose(fn(sharded, False), fn(jnp.asarray(x), False), rtol=1e-6)
  np.testing.assert_array_equal(fn(sharded, True), fn(jnp.asarray(x), True))


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_other_platforms_lower_to_one_xla_reduction(platform):
  """The halving is XLA:CPU's remedy: a program lowered for TPU or GPU (from this CPU host) keeps XLA's reduction."""
  x = jnp.asarray(_data())
  lowered = lambda p: jax.jit(platforms.pixel_sum, static_argnums=1).trace(x, False).lower(
      lowering_platforms=(p,)).as_text()
  assert lowered(platform).count("stablehlo.reduce") == 1 and "stablehlo.pad" not in lowered(platform)
  assert lowered("cpu").count("stablehlo.slice") > 2  # the halving tree
