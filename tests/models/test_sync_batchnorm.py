"""SPADE's batch statistics are global over a batch sharded on 8 devices: under jit and under shard_map."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from spade_jax.models import SPADE


def _setup():
  assert jax.device_count() == 8, "conftest.py should give 8 simulated CPU devices"
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 8, 8, 6)) * 3 + 1, jnp.float32)
  seg = jnp.asarray(np.eye(4, dtype=np.float32)[rng.integers(0, 4, (16, 16, 16))])
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
  return x, seg, mesh


def _reference(module, variables, x, seg):
  with jax.default_device(jax.devices()[0]):
    return module.apply(variables, x, seg, train=True, mutable=["batch_stats"])


def test_sync_batchnorm_under_jit_with_sharded_batch():
  x, seg, mesh = _setup()
  module = SPADE("syncbatch")
  variables = module.init(jax.random.key(0), x, seg)
  want, want_state = _reference(module, variables, x, seg)
  data = NamedSharding(mesh, P("data"))
  with jax.set_mesh(mesh):
    xs, segs = jax.device_put(x, data), jax.device_put(seg, data)
    step = jax.jit(lambda v, a, b: module.apply(v, a, b, train=True, mutable=["batch_stats"]))
    got, got_state = step(variables, xs, segs)
  assert got.sharding.spec[0] == "data"  # the batch really was split over the devices
  np.testing.assert_allclose(got, want, atol=1e-5)
  for k in ("mean", "var"):
    d = np.abs(np.asarray(got_state["batch_stats"]["param_free_norm"][k]) -
               np.asarray(want_state["batch_stats"]["param_free_norm"][k])).max()
    assert d <= 1e-6, (k, d)


def test_sync_batchnorm_under_shard_map_with_axis_name():
  x, seg, mesh = _setup()
  synced, local = SPADE("syncbatch", axis_name="data"), SPADE("batch", axis_name="data")
  variables = synced.init(jax.random.key(0), x, seg)
  want, want_state = _reference(SPADE("syncbatch"), variables, x, seg)

  def run(module):
    # check_vma proves the synced statistics are replicated; per-device ones are not, so skip the check there.
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P("data"), P()),
                       check_vma=module.param_free_norm == "syncbatch")
    def f(v, a, b):
      return module.apply(v, a, b, train=True, mutable=["batch_stats"])
    data = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
      return jax.jit(f)(variables, jax.device_put(x, data), jax.device_put(seg, data))

  got, got_state = run(synced)
  np.testing.assert_allclose(got, want, atol=1e-5)
  for k in ("mean", "var"):
    d = np.abs(np.asarray(got_state["batch_stats"]["param_free_norm"][k]) -
               np.asarray(want_state["batch_stats"]["param_free_norm"][k])).max()
    assert d <= 1e-6, (k, d)
  # Without synchronisation ('batch' ignores axis_name) each device normalises by its own 2 samples: different.
  got_local, _ = run(local)
  assert np.abs(np.asarray(got_local) - np.asarray(want)).max() > 1e-3
