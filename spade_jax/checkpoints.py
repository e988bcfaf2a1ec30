"""Reading checkpoints: where they are, which steps they hold, the saved config, and some subtrees of the state.

Below training, so that inference, eval.py and the converter read a run without importing the trainer; writing
(`spade_jax.training.checkpoint.Checkpointer`) lives with the training loop.

Layout: ``{workdir}/checkpoints/{step}/{state,data_iter,config}``. ``state`` is a plain nested dict
(``{'step', 'g', 'd', 'e'?, 'opt_g', 'opt_d', 'ema'?}``), so `restore_subtrees` reads the generator back without
model code or the training mesh; ``config`` is a JSON dict, so the networks can be rebuilt from the checkpoint alone.
These readers are single-process (notebook, converter, eval). Orbax and grain are imported on first use, so that
importing this module (and spade_jax.inference) stays light.
"""
from __future__ import annotations

import pathlib
from collections.abc import Iterable

import jax
from etils import epath

__all__ = ["STATE", "DATA_ITER", "CONFIG", "checkpoint_dir", "resolve_checkpoint", "latest_step", "restore_subtrees",
           "read_config_dir"]

STATE, DATA_ITER, CONFIG = "state", "data_iter", "config"


def checkpoint_dir(workdir) -> epath.Path:
  """Where a run in `workdir` keeps its checkpoints (epath: local paths and gs:// alike)."""
  return epath.Path(workdir) / "checkpoints"


def absolute(directory) -> epath.Path:
  """Orbax rejects relative paths ("Checkpoint path should be absolute"); gs:// paths already are."""
  p = epath.Path(directory)
  return p if p.is_absolute() else p.absolute()


def item_handlers(state_handler) -> dict:
  """Registered up front so that restores without a target for an item, and item_metadata(), work."""
  import grain
  import orbax.checkpoint as ocp
  return {STATE: state_handler, DATA_ITER: grain.checkpoint.CheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()}


def resolve_step(mngr, directory, step) -> int:
  """`step`, checked to exist in the manager's folder; None: the latest."""
  steps = mngr.all_steps()
  if step is None:
    if not steps:
      raise FileNotFoundError(f"no checkpoint found in {directory}")
    return max(steps)
  if int(step) not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (available: {sorted(steps)})")
  return int(step)


def _has_item(mngr, step: int, name: str) -> bool:
  return (epath.Path(mngr.directory) / str(step) / name).is_dir()


def read_config(mngr, directory, step) -> dict:
  """The config dict saved with `step` (None = latest) by the manager of `directory`."""
  import orbax.checkpoint as ocp
  step = resolve_step(mngr, directory, step)
  if not _has_item(mngr, step, CONFIG):
    raise FileNotFoundError(f"checkpoint {directory}/{step} has no config")
  return mngr.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]


def _reader(directory):
  import orbax.checkpoint as ocp
  directory = absolute(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint directory {directory}")
  # PyTreeCheckpointHandler (not Standard) for 'state': it allows partial_restore of some top-level keys.
  return ocp.CheckpointManager(
      directory,
      # Not read_only=True: that logs a warning on every open; this manager never saves, so it writes nothing.
      options=ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False),
      item_handlers=item_handlers(ocp.PyTreeCheckpointHandler()))


def restore_subtrees(directory, keys: Iterable[str] = ("g", "e"), step: int | None = None, *, device=None) -> dict:
  """Reads only `keys` of the saved state onto one device, with no model code and whatever mesh wrote it.

  For notebooks, eval and the weight converter: the target tree is built from the checkpoint's own metadata.
  Keys absent from the checkpoint (e.g. 'e' without the VAE encoder) are absent from the result.
  `directory` is the checkpoints folder (`checkpoint_dir(workdir)`).
  """
  import orbax.checkpoint as ocp
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])  # devices()[0]: not ours on host 1
  with _reader(directory) as mngr:
    step = resolve_step(mngr, directory, step)
    tree = mngr.item_metadata(step)[STATE].tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          {k: tree[k] for k in keys if k in tree})
    if not target:
      return {}
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    return dict(mngr.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE])


def read_config_dir(directory, step: int | None = None) -> dict:
  """The config dict of checkpoint `step` (None = latest) in the checkpoints folder `directory`."""
  with _reader(directory) as mngr:
    return read_config(mngr, directory, step)


def _is_step(p: pathlib.Path) -> bool:
  return p.name.isdigit() and (p / STATE).is_dir()


def latest_step(directory) -> int | None:
  """The highest step with a saved state in the (local) checkpoints folder `directory`; None when it has none."""
  steps = [int(c.name) for c in pathlib.Path(directory).iterdir() if _is_step(c)]
  return max(steps) if steps else None


def resolve_checkpoint(path, step: int | None = None) -> tuple[pathlib.Path, int | None]:
  """(checkpoints folder, step) for a workdir, a `checkpoints` folder or one step's folder (`checkpoints/<step>`)."""
  p = pathlib.Path(path).expanduser().absolute()
  if not p.exists():
    raise FileNotFoundError(f"no checkpoint at {p}")
  if (p / "checkpoints").is_dir():
    return p / "checkpoints", step
  if _is_step(p):
    if step is not None and int(step) != int(p.name):
      raise ValueError(f"{p} is the checkpoint of step {p.name}, but step={step} was asked for")
    return p.parent, int(p.name)
  if any(_is_step(c) for c in p.iterdir()):
    return p, step
  raise FileNotFoundError(f"{p} holds no checkpoint: expected a workdir with checkpoints/<step>/state, a "
                          "checkpoints folder, or a checkpoints/<step> folder (convert official .pth files with "
                          "python -m spade_jax.convert)")
