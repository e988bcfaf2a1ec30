"""Writing checkpoints on Orbax: the train state, the grain iterator position and the run config, one folder per step.

Layout: ``{workdir}/checkpoints/{step}/{state,data_iter,config}`` (see spade_jax.checkpoints, which reads them).

* ``state`` is a plain nested dict (``{'step', 'g', 'd', 'e'?, 'opt_g', 'opt_d'}``) of (possibly sharded) jax.Arrays.
* ``data_iter`` is optional: a resumed run continues mid-epoch from the same batch.
* ``config`` is a JSON dict, so eval and the converter can rebuild the model from the checkpoint alone.

Multi-host: every process must call `Checkpointer.save` / `Checkpointer.restore` (they are collectives; each process
writes its own shards and its own grain state ``process_<i>-of-<n>.json``). The single-process readers
(`restore_subtrees`, `read_config_dir`) live in spade_jax.checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from spade_jax.checkpoints import (
  CONFIG,
  DATA_ITER,
  STATE,
  CheckpointError,
  absolute,
  item_handlers,
  read_config,
  resolve_step,
)

__all__ = ["Checkpointer", "PreemptionGuard", "is_finite_tree"]

logger = logging.getLogger("spade_jax.training")


def is_finite_tree(tree) -> bool:
  """True if every float leaf of `tree` is free of NaN/Inf (integer and PRNG-key leaves are ignored).

  The jax.Arrays are checked in one jitted program where they live (sharded arrays are not gathered; one program,
  not one per leaf shape, which on several hosts each compile every time); one bool comes back to the host.
  """
  flags, arrays = [], []
  for x in jax.tree.leaves(tree):
    if isinstance(x, (float, complex)):
      flags.append(np.isfinite(x))
    elif hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact):
      if isinstance(x, jax.Array):
        arrays.append(x)
      else:
        flags.append(np.isfinite(x).all())
  if arrays:
    flags.append(jax.device_get(_all_finite(arrays)))
  return all(bool(f) for f in flags)


@jax.jit
def _all_finite(arrays):
  return jnp.stack([jnp.isfinite(x).all() for x in arrays]).all()


class Checkpointer:
  """The training loop's checkpoints: async saves, keep the last `max_to_keep`, resume onto any mesh.

  Use as a context manager (or call `close()`) so the last async save is finished before the process exits.
  """

  def __init__(self, directory, *, max_to_keep: int | None = 3, async_save: bool = True):
    self.directory = absolute(directory)
    self._pending = None  # the step of the save in flight
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save),
        item_handlers=item_handlers(ocp.StandardCheckpointHandler()))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, *, data_iter=None, config: dict | None = None, force: bool = True) -> None:
    """Writes `state` (and the iterator position / config) at `step`, asynchronously unless async_save=False.

    Raises ValueError for a state with NaN/Inf, so a diverged run never replaces a good checkpoint. A step that
    already exists is skipped: a run resumed after preemption may reach the step it was restored from again.
    `force=False` defers to orbax's own should_save (e.g. skips steps <= the latest one). Arrays are copied to
    host before this returns (orbax's default synchronous D2H), so the next train step may donate `state`.
    """
    step = int(step)
    if not is_finite_tree(state):
      raise ValueError(f"refusing to save checkpoint at step {step}: the state has NaN/Inf values "
                       f"(the previous checkpoints in {self.directory} are kept)")
    if step in self._mngr.all_steps():
      logger.info("checkpoint for step %d already exists in %s; not saving it again", step, self.directory)
      return
    args = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      args[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      args[CONFIG] = ocp.args.JsonSave(config)
    with self._writing():  # the previous async save finishes (or fails) here
      self._mngr.save(step, args=ocp.args.Composite(**args), force=force)
    self._pending = step

  @contextlib.contextmanager
  def _writing(self):
    """A save that failed for want of disk space (RESOURCE_EXHAUSTED / ENOSPC, often only seen when the next
    save or the final wait collects the async write) becomes a CheckpointError naming the step, the folder and
    the intact checkpoint to resume from; the partial write is removed to give the space back."""
    try:
      yield
    except Exception as e:  # noqa: BLE001  (anything but a full disk is re-raised as it is)
      text = str(e)
      if not (isinstance(e, OSError) and e.errno == 28 or "RESOURCE_EXHAUSTED" in text
              or "No space left" in text):
        raise
      step = self._pending
      for tmp in epath.Path(self.directory).glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)
      self._mngr.reload()
      intact = [s for s in self._mngr.all_steps() if s != step]
      free = shutil.disk_usage(self.directory).free
      raise CheckpointError(
          f"checkpoint {step} could not be written to {self.directory}: the disk is full ({free / 2**20:.1f} MiB "
          f"free). Training stopped; " + (f"the newest intact checkpoint is step {max(intact)}: " if intact else
                                          "no checkpoint was written yet: ")
          + "free some space (or use a --workdir on a larger disk) and run the same command to resume",
          step=step) from None

  def restore(self, step: int | None = None, *, abstract_state, data_iter=None):
    """Returns the state at `step` (None = latest), laid out as `abstract_state` says.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with `sharding=` set for the *current* mesh, e.g.
    ``jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), jax.eval_shape(init), shardings)``;
    it also brings back the optax namedtuples. `data_iter`, if given, is moved in place to the saved position
    (left as is, with a warning, when the checkpoint has no iterator state).
    """
    step = resolve_step(self._mngr, self.directory, step)
    args = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      if self.has_data_iter(step):
        args[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
      else:
        logger.warning("checkpoint %s/%d has no data iterator state for %d processes; the iterator is left as is",
                       self.directory, step, jax.process_count())
    return self._mngr.restore(step, args=ocp.args.Composite(**args))[STATE]

  def set_aside(self, step: int) -> str:
    """Renames a damaged `step` folder to `<step>.damaged` (kept for inspection, never deleted; Orbax ignores it),
    so that the run saves that step again. Every process calls it; process 0 renames."""
    src = epath.Path(self._mngr.directory) / str(int(step))
    dst = src.parent / f"{int(step)}.damaged"
    n = 1
    while dst.exists():
      n += 1
      dst = src.parent / f"{int(step)}.damaged{n}"
    if jax.process_index() == 0:
      src.rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._mngr.reload()
    return str(dst)

  def has_data_iter(self, step: int) -> bool:
    """Whether `step` holds this process's iterator position: grain writes one file per process
    (process_<i>-of-<n>.json), so a checkpoint written by another number of processes has none for this run."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return (epath.Path(self._mngr.directory) / str(int(step)) / DATA_ITER / name).exists()

  def read_config(self, step: int | None = None) -> dict:
    """The config dict saved with `step` (None = latest)."""
    return read_config(self._mngr, self.directory, step)

  def wait(self) -> None:
    """Blocks until the pending async save is on disk."""
    with self._writing():
      self._mngr.wait_until_finished()

  def close(self) -> None:
    with self._writing():
      self._mngr.close()  # waits for the pending save

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class PreemptionGuard:
  """Turns SIGTERM (and SIGINT) into a flag the loop polls each step, so it can save a checkpoint and exit.

  with PreemptionGuard() as guard:
    for step in ...:
      ...
      if guard.should_stop(step):
        ckpt.save(step, state, ...); break

  Multi-host: a signal reaches only some hosts, and all must save at the same step, so with process_count() > 1
  no handler is installed (JAX's preemption service owns SIGTERM there: a SIGTERM on any host is announced to all)
  and `should_stop` asks `multihost_utils.reached_preemption_sync_point(step)` instead, which turns True at the same
  step on every host. Call it on every host at every step: a host that skips the agreed step never stops.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals = tuple(signals)
    self.requested = False
    self._previous = {}

  def _handler(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    logger.warning("received signal %d: will checkpoint and stop after this step", signum)
    self.requested = True

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handler) for s in self.signals}
    return self

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return self.requested or multihost_utils.reached_preemption_sync_point(int(step))
      except RuntimeError:  # preemption service disabled
        return self.requested
    return self.requested
