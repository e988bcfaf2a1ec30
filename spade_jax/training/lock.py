"""One run per workdir: a second train.py on the same workdir (a requeued job, a second terminal) would overwrite the
first one's checkpoints, so it stops at once with a message naming the holder.

The lock is `fcntl.flock` on `{workdir}/train.lock`, taken by process 0 of a job (the other processes of a multi-host
job write the same workdir by design). The kernel releases it when the holder dies, however it dies, so a stale lock
cannot block a new run: the file's text (host, pid, start time) then only names the run that did not clean up, and the
new run takes over with a warning. On file systems without flock (some network mounts) the run goes on unlocked,
with a warning.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from absl import logging

from spade_jax.errors import UserError

LOCK_FILE = "train.lock"


def _holder_text() -> str:
  return f"host={socket.gethostname()} pid={os.getpid()} started={time.strftime('%Y-%m-%d %H:%M:%S')}\n"


class WorkdirLock:
  """Context manager: holds the workdir's lock for the run; raises UserError when another live run holds it."""

  def __init__(self, workdir, enabled: bool = True):
    self.path = Path(workdir) / LOCK_FILE
    self.enabled = enabled
    self._file = None

  def __enter__(self):
    if not self.enabled:
      return self
    f = open(self.path, "a+")  # noqa: SIM115  (held open for the run: closing it releases the lock)
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise UserError(f"workdir {self.path.parent} is in use by another training run ({holder}): wait for it to "
                      f"finish or stop it, or use another --workdir") from None
    except OSError as e:  # no flock on this file system
      logging.warning("cannot lock %s (%s): make sure no other run uses this workdir", self.path, e)
      f.close()
      return self
    f.seek(0)
    previous = f.read().strip()
    if previous:
      logging.warning("taking over the lock of a run that is gone (%s) in %s", previous, self.path.parent)
    f.seek(0)
    f.truncate()
    f.write(_holder_text())
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()  # a clean exit leaves no holder behind
      self._file.close()
      self._file = None
