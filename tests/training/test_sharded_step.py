"""On 8 simulated devices the train step (jit over global arrays, and the shard_map variant) gives the same losses
and updates as one device on the same global batch."""
import jax
import numpy as np
import optax
import pytest

from spade_jax import parallel
from spade_jax.training.state import create_train_state
from tests.training.tiny import random_batch, tiny_config


def _run(config, ndev, use_shard_map, txs, steps=1, shard_params=False, state0=None):
  """`state0`: start from this (host) state, put where this setup keeps it (one compiled init for all runs)."""
  mesh = parallel.make_mesh(ndev)
  state, setup = create_train_state(config, mesh, optimizers=txs, use_shard_map=use_shard_map,
                                    shard_params=shard_params, min_size=512, fresh=state0 is None)
  step = setup.step
  with jax.set_mesh(mesh):
    if state0 is not None:
      state = jax.device_put(state0, setup.sharding)
    metrics = []
    for i in range(steps):
      state, m = step(state, parallel.global_batch(random_batch(config, seed=i), mesh), None, jax.random.key(1))
      metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


@pytest.fixture(scope="module")
def runs():
  """SGD (lr 1e-2) makes the update a fixed multiple of the gradient. With Adam(b1=0) the first update is
  g / (|g| + eps), which for gradients that are zero up to rounding (e.g. conv biases in front of a batch norm)
  turns rounding noise into +-lr in any implementation. The losses of a first step do not depend on the optimiser."""
  config = tiny_config(use_vae=True)
  sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2)
  state0 = jax.device_get(create_train_state(config, parallel.make_mesh(1), optimizers=(sgd, sgd))[0])
  return {name: _run(config, ndev, sm, (sgd, sgd), shard_params=fsdp, state0=state0) for name, ndev, sm, fsdp in [
      ("one", 1, False, False), ("jit8", 8, False, False), ("shard_map8", 8, True, False),
      ("jit8_sharded_params", 8, False, True)]}


@pytest.mark.parametrize("name", ["jit8", "shard_map8", "jit8_sharded_params"])
def test_eight_devices_equal_one_device(runs, name):
  (want, want_m), (got, got_m) = runs["one"], runs[name]
  for k in want_m[0]:
    np.testing.assert_allclose(got_m[0][k], want_m[0][k], atol=1e-5, rtol=1e-6, err_msg=k)
  diffs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
                       if np.issubdtype(np.asarray(a).dtype, np.floating) else 0.0, want, got)
  worst = max(jax.tree.leaves(diffs))
  assert worst <= 1e-5, f"{name}: largest state difference {worst}"
  assert int(got["step"]) == 1


def test_sharded_params_really_are_sharded():
  config = tiny_config(use_vae=True)
  mesh = parallel.make_mesh(8)
  sgd = optax.sgd(1e-2)
  _, setup = create_train_state(config, mesh, optimizers=(sgd, sgd), fresh=False, shard_params=True, min_size=512)
  specs = [s.spec for s in jax.tree.leaves(setup.sharding)]
  assert any(parallel.DATA in tuple(s) for s in specs) and any(tuple(s) == () for s in specs)


def test_indivisible_batch_is_a_clear_error():
  mesh = parallel.make_mesh(8)
  with pytest.raises(ValueError, match="batch_size=12 must be divisible by the 8 devices"):
    parallel.check_batch_size(12, mesh)
