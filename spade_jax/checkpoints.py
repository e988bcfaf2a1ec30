"""Reading checkpoints: where they are, which steps they hold, the saved config, and some subtrees of the state.

Below training, so that inference, eval.py and the converter read a run without importing the trainer; writing
(`spade_jax.training.checkpointer.Checkpointer`) lives with the training loop.

Layout: ``{workdir}/checkpoints/{step}/{state,data_iter,config}``. ``state`` is a plain nested dict
(``{'step', 'g', 'd', 'e'?, 'opt_g', 'opt_d', 'ema'?}``), so `restore_subtrees` reads the generator back without
model code or the training mesh; ``config`` is a JSON dict, so the networks can be rebuilt from the checkpoint alone.
These readers are single-process (notebook, converter, eval). Orbax and grain are imported on first use, so that
importing this module (and spade_jax.inference) stays light.
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import re
from collections.abc import Iterable

import jax
from etils import epath

from spade_jax import launch
from spade_jax.errors import UserError

__all__ = ["STATE", "DATA_ITER", "CONFIG", "CheckpointError", "checkpoint_dir", "resolve_checkpoint", "latest_step",
           "restore_subtrees", "read_config_dir", "reading"]

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


class CheckpointError(UserError):
  """A checkpoint that cannot be read back: a file missing, truncated or unreadable (an interrupted copy, a full
  disk). `step` is the damaged step; the message names the file."""

  def __init__(self, message: str, step: int | None = None):
    super().__init__(message)
    self.step = step


# How TensorStore / Orbax / json say that a file of a checkpoint is missing or damaged.
_DAMAGE = re.compile(r"NOT_FOUND|OUT_OF_RANGE|DATA_LOSS|Error reading|Error opening|No such file|corrupt|"
                     r"Unexpected end|checksum|Expecting value|Unterminated|truncat", re.IGNORECASE)


def _chain(e: BaseException):
  while e is not None:
    yield e
    e = e.__cause__ or e.__context__


def damage(e: BaseException, directory, step) -> CheckpointError | None:
  """A CheckpointError naming the damaged file when `e` (raised while reading checkpoint `step`) says that a file is
  missing or damaged; None when `e` is something else (a bug keeps its traceback). Orbax wraps TensorStore's
  error, which names the file (or, inside an OCDBT database, its folder and the array), in a bare Exception."""
  if isinstance(e, CheckpointError):
    return e
  chain = list(_chain(e))
  text = " | ".join(str(x) for x in chain)
  if not (any(isinstance(x, (FileNotFoundError, EOFError, json.JSONDecodeError)) for x in chain)
          or _DAMAGE.search(text)):
    return None
  files = re.findall(r'local file "([^"]+)"', text) or [str(x.filename) for x in chain if getattr(x, "filename", None)]
  file = files[-1] if files else f"{directory}/{step}"
  array = re.search(r'Error (?:reading|opening) "([^"/]+)', text)
  where = f" (array {array.group(1)})" if array and not array.group(1).startswith("zarr") else ""
  if "NOT_FOUND" in text or "No such file" in text or any(isinstance(x, FileNotFoundError) for x in chain):
    how = "missing"
  elif re.search(r"OUT_OF_RANGE|Truncated|Unexpected end", text) or any(isinstance(x, EOFError) for x in chain):
    how = "truncated"
  else:
    how = "unreadable"
  return CheckpointError(f"checkpoint {step} in {directory} is incomplete or corrupt: {file}{where}: a file is {how}",
                         step=step)


def earlier_steps(directory, step) -> list[int]:
  """The steps before `step` in the (local) checkpoints folder, newest first."""
  try:
    return sorted((s for s in launch.complete_steps(directory) if s < step), reverse=True)
  except OSError:
    return []


@contextlib.contextmanager
def reading(directory, step, advice: str | None = None):
  """Turns a damaged-file error while reading checkpoint `step` into a CheckpointError naming the file; `advice`
  (or, by default, which earlier step to pass instead) is added to the message."""
  try:
    yield
  except Exception as e:  # noqa: BLE001  (anything that is not damage is re-raised as it is)
    err = damage(e, directory, step)
    if err is None:
      raise
    if advice is None:
      earlier = earlier_steps(directory, step)
      advice = (f"use the newest earlier checkpoint, step {earlier[0]} (eval.py --checkpoint={earlier[0]}, "
                f"spade_jax.load(..., step={earlier[0]}), python -m spade_jax.serve --step={earlier[0]})"
                if earlier else "no earlier checkpoint is left in that folder")
    raise CheckpointError(f"{err}; {advice}" if advice else str(err), step=step) from e


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
  with reading(directory, step):
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
    with reading(directory, step):
      metadata = mngr.item_metadata(step)[STATE]
      if metadata is None:
        raise FileNotFoundError(f"{directory}/{step}/{STATE}/_METADATA")
      tree = metadata.tree
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
  """The highest finished step with a saved state in the checkpoints folder `directory`; None when it has none."""
  steps = [s for s in launch.complete_steps(directory) if (epath.Path(directory) / str(s) / STATE).is_dir()]
  return max(steps, default=None)


def resolve_checkpoint(path, step: int | None = None) -> tuple[pathlib.Path, int | None]:
  """(checkpoints folder, step) for a workdir, a `checkpoints` folder or one step's folder (`checkpoints/<step>`)."""
  p = pathlib.Path(path).expanduser().absolute()
  if not p.exists():
    raise FileNotFoundError(f"no checkpoint at {p}")
  if (p / "checkpoints").is_dir():
    return p / "checkpoints", step
  if _is_step(p):
    if step is not None and int(step) != int(p.name):
      raise UserError(f"{p} is the checkpoint of step {p.name}, but step={step} was asked for")
    return p.parent, int(p.name)
  if any(_is_step(c) for c in p.iterdir()):
    return p, step
  raise FileNotFoundError(f"{p} holds no checkpoint: expected a workdir with checkpoints/<step>/state, a "
                          "checkpoints folder, or a checkpoints/<step> folder (convert official .pth files with "
                          "python -m spade_jax.convert)")
