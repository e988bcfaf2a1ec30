"""Checkpointer round trips on the 8-device CPU mesh, plus the 1-device notebook read path in a subprocess."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spade_jax import checkpoints as readers
from spade_jax.training import checkpointer as ckpt

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8, "conftest.py should give 8 CPU devices"
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))


def make_state(mesh, step=0, scale=1.0, with_e=False):
  """A tiny train-state dict: data-sharded and replicated leaves, an optax state with namedtuples, a typed key."""
  sharded, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  put = lambda x, s: jax.device_put(jnp.asarray(x, jnp.float32) * scale, s)
  g = {"params": {"w": put(np.arange(16).reshape(8, 2), sharded), "b": put(np.ones(3), replicated)},
       "batch_stats": {"mean": put(np.full(4, 0.5), replicated)},
       "spectral": {"u": put(np.linspace(0, 1, 8), sharded)}}
  d = {"params": {"k": put(np.arange(6).reshape(2, 3), replicated)}, "spectral": {}}
  state = {"step": jnp.int32(step), "rng": jax.random.key(step), "g": g, "d": d,
           "opt_g": optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).init(g["params"]),
           "opt_d": optax.adam(1e-3).init(d["params"])}
  if with_e:
    state["e"] = {"params": {"fc": put(np.arange(8), sharded)}}
  return state


def abstract_of(state):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)


def assert_same(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.sharding == w.sharding, (g, w)
    if jax.dtypes.issubdtype(w.dtype, jax.dtypes.prng_key):
      g, w = jax.random.key_data(g), jax.random.key_data(w)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_round_trip_sharded_state_config_and_layout(mesh, tmp_path):
  state = make_state(mesh, step=7, with_e=True)
  state["opt_g"] = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).update(
      state["g"]["params"], state["opt_g"], state["g"]["params"])[1]  # non-trivial mu/nu/count
  with ckpt.Checkpointer(readers.checkpoint_dir(tmp_path)) as ck:
    ck.save(7, state, config={"model": {"ngf": 64}, "name": "x"})
    ck.wait()
    restored = ck.restore(abstract_state=abstract_of(state))
    assert ck.read_config() == {"model": {"ngf": 64}, "name": "x"}
  assert_same(restored, state)
  assert type(restored["opt_g"]) is type(state["opt_g"])  # optax namedtuples, not dicts
  assert isinstance(restored["opt_d"][0], optax.ScaleByAdamState)
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "7").iterdir() if p.is_dir()) == ["config", "state"]
  assert readers.read_config_dir(tmp_path / "checkpoints", 7)["name"] == "x"


def test_max_to_keep_latest_step_and_existing_step_is_skipped(mesh, tmp_path):
  with ckpt.Checkpointer(tmp_path, max_to_keep=2) as ck:
    assert ck.latest_step() is None and ck.all_steps() == []
    for step in (1, 2, 3, 4):
      ck.save(step, make_state(mesh, step))
    assert ck.latest_step() == 4
    ck.save(4, make_state(mesh, 4, scale=-1.0))  # same step again (resume after preemption): no-op
    ck.wait()
    assert ck.all_steps() == [3, 4]
    assert_same(ck.restore(4, abstract_state=abstract_of(make_state(mesh))), make_state(mesh, 4))
  with ckpt.Checkpointer(tmp_path, max_to_keep=2) as ck:  # a new process sees the same steps
    assert ck.all_steps() == [3, 4] and ck.latest_step() == 4


def test_refuses_non_finite_state_and_keeps_previous(mesh, tmp_path):
  good = make_state(mesh, 1)
  bad = make_state(mesh, 2)
  w = np.asarray(bad["g"]["params"]["w"]).copy()
  w[3, 1] = np.nan
  bad["g"]["params"]["w"] = jax.device_put(w, bad["g"]["params"]["w"].sharding)
  assert ckpt.is_finite_tree(good) and not ckpt.is_finite_tree(bad)
  assert not ckpt.is_finite_tree({"x": np.array([1.0, np.inf]), "n": 3})
  with ckpt.Checkpointer(tmp_path, max_to_keep=1) as ck:
    ck.save(1, good)
    with pytest.raises(ValueError, match="step 2"):
      ck.save(2, bad)
    ck.wait()
    assert ck.all_steps() == [1]
    assert_same(ck.restore(abstract_state=abstract_of(good)), good)


def test_grain_iterator_resumes_at_next_batch(mesh, tmp_path):
  make_ds = lambda: grain.MapDataset.range(100).shuffle(seed=1).batch(4).to_iter_dataset()
  it = iter(make_ds())
  for _ in range(3):
    next(it)
  state = make_state(mesh, 3)
  with ckpt.Checkpointer(tmp_path) as ck:
    ck.save(3, state, data_iter=it)
    expected = [next(it) for _ in range(2)]  # the save captured the position before these
    ck.save(5, state)  # a checkpoint without iterator state
    ck.wait()
    fresh = iter(make_ds())
    ck.restore(3, abstract_state=abstract_of(state), data_iter=fresh)
    np.testing.assert_array_equal(next(fresh), expected[0])
    np.testing.assert_array_equal(next(fresh), expected[1])
    fresh2 = iter(make_ds())
    ck.restore(5, abstract_state=abstract_of(state), data_iter=fresh2)  # no iterator saved: left at the start
    np.testing.assert_array_equal(next(fresh2), next(iter(make_ds())))
    assert_same(ck.restore(3, abstract_state=abstract_of(state)), state)  # iterator state present but not asked for


def test_missing_checkpoint_error_names_directory(mesh, tmp_path):
  empty = tmp_path / "nothing_here"
  with ckpt.Checkpointer(empty) as ck:
    with pytest.raises(FileNotFoundError, match="nothing_here"):
      ck.restore(abstract_state=abstract_of(make_state(mesh)))
    ck.save(1, make_state(mesh, 1))
    ck.wait()
    with pytest.raises(FileNotFoundError, match="step 9"):
      ck.restore(9, abstract_state=abstract_of(make_state(mesh)))
    with pytest.raises(FileNotFoundError, match="no config"):
      ck.read_config()
  with pytest.raises(FileNotFoundError, match="elsewhere"):
    readers.restore_subtrees(tmp_path / "elsewhere")


_SUBPROCESS = """
import json, sys
import jax, numpy as np
from spade_jax import checkpoints as readers
from spade_jax.training import checkpointer as ckpt
assert jax.device_count() == 1, jax.devices()
out = readers.restore_subtrees(sys.argv[1], keys=('g', 'e', 'opt_g'))
leaves = jax.tree.leaves(out)
assert all(x.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0]) for x in leaves)
print(json.dumps({'keys': sorted(out), 'w': np.asarray(out['g']['params']['w']).tolist(),
                  'u': np.asarray(out['g']['spectral']['u']).tolist(),
                  'mu_w': np.asarray(out['opt_g']['inner_state'][0]['mu']['w']).tolist(),
                  'cfg': readers.read_config_dir(sys.argv[1])}))
"""


def test_restore_subtrees_on_one_device_from_8_device_checkpoint(mesh, tmp_path):
  state = make_state(mesh, 5)
  with ckpt.Checkpointer(tmp_path) as ck:
    ck.save(5, state, config={"ngf": 8})
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, str(tmp_path)], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["keys"] == ["g", "opt_g"]  # no 'e' in this checkpoint
  np.testing.assert_array_equal(out["w"], np.asarray(state["g"]["params"]["w"]))
  np.testing.assert_array_equal(out["u"], np.asarray(state["g"]["spectral"]["u"]))
  np.testing.assert_array_equal(out["mu_w"], np.asarray(state["opt_g"].inner_state[0].mu["w"]))
  assert out["cfg"] == {"ngf": 8}


def test_restore_subtrees_in_process(mesh, tmp_path):
  state = make_state(mesh, 2, with_e=True)
  with ckpt.Checkpointer(tmp_path) as ck:
    ck.save(2, state)
  dev = jax.devices()[3]
  out = readers.restore_subtrees(tmp_path, device=dev)
  assert sorted(out) == ["e", "g"]
  assert all(x.sharding == jax.sharding.SingleDeviceSharding(dev) for x in jax.tree.leaves(out))
  np.testing.assert_array_equal(out["e"]["params"]["fc"], np.asarray(state["e"]["params"]["fc"]))


def test_preemption_guard_sets_flag_and_restores_handler():
  before = signal.getsignal(signal.SIGTERM)
  with ckpt.PreemptionGuard() as guard:
    assert not guard.should_stop(0)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested and guard.should_stop(1)
  assert signal.getsignal(signal.SIGTERM) is before
