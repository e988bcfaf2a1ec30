"""Device mesh, shardings, and host-local batches -> global arrays (one place for all of it)."""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA = "data"


def maybe_initialize_distributed() -> None:
  """Join a multi-host job. On TPU pods, Slurm and Open MPI jax finds its peers itself; elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Must run before any JAX computation."""
  env = {k: os.environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
  auto = any(os.environ.get(k) for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"))
  if all(env.values()):
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                               int(env["JAX_PROCESS_ID"]))
  elif auto:
    jax.distributed.initialize()


def make_mesh(num_data: int = -1) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `num_data` devices (-1: all devices of all hosts).

  Axis type Auto: GSPMD propagates shardings through the model (batch statistics become global reductions
  automatically), which is what a data-parallel GAN step with replicated parameters wants.
  """
  n = jax.device_count() if num_data in (-1, None) else int(num_data)
  if n < 1 or n > jax.device_count():
    raise ValueError(f"config.parallel.num_data={num_data} but {jax.device_count()} devices are visible")
  return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def check_batch_size(global_batch: int, mesh, grad_accum: int = 1) -> int:
  """The per-host batch; the global batch must split evenly over devices (the official code asserts the same) and,
  with gradient accumulation, over devices x micro-batches."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"config.train.batch_size={global_batch} must be divisible by the {n} devices of the mesh "
                     f"(e.g. {max(n, global_batch // n * n)})")
  if global_batch % (n * grad_accum):
    m = n * grad_accum
    raise ValueError(f"config.train.batch_size={global_batch} must be divisible by devices x grad_accum = {n} x "
                     f"{grad_accum} = {m}, so that every micro-batch splits evenly over the devices (e.g. "
                     f"{max(m, global_batch // m * m)})")
  return global_batch // jax.process_count()


def global_batch(local: dict, mesh) -> dict:
  """Per-host numpy batch -> global jax.Arrays sharded over the data axis (works on one or many hosts)."""
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
