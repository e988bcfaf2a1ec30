"""Device mesh, shardings, and host-local batches -> global arrays (one place for all of it)."""
from __future__ import annotations

import contextlib
import os
import sys

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from spade_jax import launch
from spade_jax.errors import EXIT_USER_ERROR, USER_ERRORS, UserError, message_of, verbose, write_error_line

DATA = "data"
DEFAULT_HEARTBEAT_SECS = 100  # JAX's default: a dead peer stops the others within about this long


def heartbeat_timeout() -> int:
  """Seconds without a heartbeat after which JAX's coordination service declares a process dead and stops every
  other process (`SPADE_JAX_HEARTBEAT_TIMEOUT`; the launcher's --heartbeat_timeout)."""
  return int(os.environ.get(launch.HEARTBEAT_ENV) or DEFAULT_HEARTBEAT_SECS)


def maybe_initialize_distributed() -> None:
  """Join a multi-host job. On TPU pods, Slurm and Open MPI jax finds its peers itself; elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (`python -m spade_jax.launch` does, for N processes
  on one machine). Must run before any JAX computation."""
  env = {k: os.environ.get(k) for k in launch.COORDINATOR_VARS}
  auto = any(os.environ.get(k) for k in launch.CLUSTER_VARS)
  if all(env.values()):
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                               int(env["JAX_PROCESS_ID"]), heartbeat_timeout_seconds=heartbeat_timeout())
  elif auto:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout())


@contextlib.contextmanager
def fail_fast():
  """With several processes, an error ends this process at once, after logging it. A normal exit would wait up to
  5 minutes at JAX's shutdown barrier for peers that may be blocked in a collective with this process; gone, it is
  noticed by their collectives at once or by the coordination service within the heartbeat timeout, and they stop
  too (the launcher's / train.py's supervisor then says why). A user's mistake (`errors.UserError`, a missing file)
  ends it as with one process: one `error: ...` line and exit status 2, its traceback only with --verbosity=1 or
  SPADE_VERBOSE=1 (the launcher then shows the line once for all processes)."""
  try:
    yield
  except BaseException as e:
    if jax.process_count() == 1:
      raise
    if isinstance(e, USER_ERRORS) and not verbose():
      write_error_line(message_of(e))
      os._exit(EXIT_USER_ERROR)
    logging.exception("process %d failed", jax.process_index())
    logging.flush()
    sys.stderr.flush()
    os._exit(EXIT_USER_ERROR if isinstance(e, USER_ERRORS) else 1)


def sync(name: str) -> None:
  """A barrier of all processes (no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_process_first(name: str):
  """Process 0 runs the block first (e.g. writes a cache or a data set), the others after it: they then find its
  files on a shared file system, or write their own copy where there is none."""
  if jax.process_index() != 0:
    sync(name)
  yield
  if jax.process_index() == 0:
    sync(name)


def make_mesh(num_data: int = -1) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `num_data` devices (-1: all devices of all hosts).

  Axis type Auto: GSPMD propagates shardings through the model (batch statistics become global reductions
  automatically), which is what a data-parallel GAN step with replicated parameters wants.
  """
  n = jax.device_count() if num_data in (-1, None) else int(num_data)
  if n < 1 or n > jax.device_count():
    raise UserError(f"config.parallel.num_data={num_data} but {jax.device_count()} devices are visible")
  return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def local_rows(mesh, global_batch: int) -> np.ndarray:
  """The rows of a global batch that this process's devices hold, ascending: what this process loads and passes
  to `global_batch` (make_array_from_process_local_data places them in this order). All rows with one process."""
  idx = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  return np.asarray(sorted({r for (sl,) in idx.values() for r in range(*sl.indices(global_batch))}), np.int64)


def check_batch_size(global_batch: int, mesh, grad_accum: int = 1) -> int:
  """The per-host batch; the global batch must split evenly over devices (the official code asserts the same) and,
  with gradient accumulation, over devices x micro-batches."""
  n = mesh.devices.size
  if global_batch % n:
    raise UserError(f"config.train.batch_size={global_batch} must be divisible by the {n} devices of the mesh "
                     f"(e.g. {max(n, global_batch // n * n)})")
  if global_batch % (n * grad_accum):
    m = n * grad_accum
    raise UserError(f"config.train.batch_size={global_batch} must be divisible by devices x grad_accum = {n} x "
                     f"{grad_accum} = {m}, so that every micro-batch splits evenly over the devices (e.g. "
                     f"{max(m, global_batch // m * m)})")
  local = len(local_rows(mesh, global_batch))
  if local * jax.process_count() != global_batch:
    raise UserError(f"the mesh's {n} devices do not split evenly over the {jax.process_count()} processes (this "
                     f"one holds {local} of {global_batch} rows): use every device (config.parallel.num_data=-1) "
                     "and the same number of devices on every host")
  return local


def global_batch(local: dict, mesh) -> dict:
  """Per-host numpy batch (this host's `local_rows`) -> global jax.Arrays sharded over the data axis (works on one
  or many hosts)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
          if k != "index"}


def state_shardings(abstract_state, mesh, shard_params: bool = False, min_size: int = 2**18):
  """Replicated state (data parallelism), or with `shard_params` every array of at least `min_size` elements split
  over the data axis along its largest divisible dimension (FSDP-style: parameters and optimiser moments are
  stored sharded and XLA all-gathers them where they are used). Small arrays stay replicated."""
  n = mesh.devices.size

  def rule(leaf):
    shape = getattr(leaf, "shape", ())
    if not shard_params or int(np.prod(shape, dtype=np.int64)) < min_size:
      return NamedSharding(mesh, P())
    dims = [d for d in np.argsort(shape)[::-1] if shape[d] % n == 0]
    if not dims:
      return NamedSharding(mesh, P())
    spec = [None] * len(shape)
    spec[dims[0]] = DATA
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(rule, abstract_state)
