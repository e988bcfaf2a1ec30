"""One setup of the train state on a mesh, for the training loop, the benchmarks and the tests alike: the step's
spec, the optimisers, the state's shapes and shardings, a fresh state built where it lives, and the jitted step."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax

from spade_jax import parallel, platforms
from spade_jax.training.schedule import make_optimizers
from spade_jax.training.step import StepSpec, init_state, make_train_step

__all__ = ["TrainSetup", "create_train_state"]


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What a run keeps around its state (not the state itself, which the step donates):
  `step(state, batch, vgg_params, rng) -> (state, metrics)` is jitted over the mesh with the state donated."""
  spec: StepSpec
  tx_g: Any
  tx_d: Any
  mesh: Any
  abstract: Any       # the state's shapes and dtypes (jax.ShapeDtypeStruct leaves)
  sharding: Any       # where each leaf of the state lives on the mesh
  step: Callable

  def target(self):
    """The abstract state with its shardings: what a checkpoint restores onto."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.abstract,
                        self.sharding)


def create_train_state(config, mesh, *, steps_per_epoch: int = 1000, optimizers=None, rng=None, fresh: bool = True,
                       use_shard_map: bool | None = None, shard_params: bool | None = None,
                       min_size: int | None = None) -> tuple[dict | None, TrainSetup]:
  """(the initial train state of `config` on `mesh`, its setup and step).

  optimizers: (tx_g, tx_d); default the config's Adam schedules over `steps_per_epoch`. rng: the initialisation key
  (default key(config.seed)). fresh: build the initial state (False: None; the caller restores one onto
  `setup.target()` or puts one onto `setup.sharding`). use_shard_map, shard_params: default
  config.train.use_shard_map and config.parallel.shard_params; min_size: the smallest array split by shard_params
  (default: parallel.state_shardings').
  """
  use_shard_map = config.train.use_shard_map if use_shard_map is None else use_shard_map
  shard_params = config.parallel.shard_params if shard_params is None else shard_params
  spec = StepSpec.from_config(config, axis_name=parallel.DATA if use_shard_map else None,
                              platform=platforms.platform_of(mesh))
  tx_g, tx_d = optimizers if optimizers is not None else make_optimizers(config, steps_per_epoch)
  rng = jax.random.key(config.seed) if rng is None else rng
  init = functools.partial(init_state, spec, tx_g, tx_d)
  size = {} if min_size is None else {"min_size": min_size}
  with jax.set_mesh(mesh):
    abstract = jax.eval_shape(init, rng)
    sharding = parallel.state_shardings(abstract, mesh, shard_params, **size)
    state = (jax.jit(init, out_shardings=sharding,
                     compiler_options=platforms.init_compiler_options(platforms.platform_of(mesh)))(rng)
             if fresh else None)
  step = make_train_step(spec, tx_g, tx_d, mesh, sharding, use_shard_map=use_shard_map)
  return state, TrainSetup(spec=spec, tx_g=tx_g, tx_d=tx_d, mesh=mesh, abstract=abstract, sharding=sharding,
                           step=step)
