"""One error type and one skip counter for everything the input pipeline rejects.

A bad file should stop training with a message that names the file and says how to fix it, instead of the
CUDA/one-hot index errors the official code gives (issues #137, #68). With ``on_bad_sample='skip'`` the same
checks log a warning and count the sample instead.
"""

from __future__ import annotations

import collections
import logging
import threading

from spade_jax.errors import UserError

logger = logging.getLogger("spade_jax.data")

SKIP_HINT = "or set config.data.on_bad_sample='skip' to drop such samples"


class DataError(UserError):
  """A data file or folder is missing, unreadable or inconsistent; the message names it and the fix."""


class SkipCounter:
  """Thread-safe count of skipped samples, by reason.

  Counts live in the process that did the skipping: with ``workers > 0`` each grain worker process keeps its
  own count (the logged warnings, which name the files, are the complete record).
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._by_reason: collections.Counter[str] = collections.Counter()

  def record(self, reason: str, message: str) -> None:
    with self._lock:
      self._by_reason[reason] += 1
    logger.warning("skipping bad sample (%s): %s", reason, message)

  @property
  def count(self) -> int:
    with self._lock:
      return sum(self._by_reason.values())

  def reset(self) -> None:
    with self._lock:
      self._by_reason.clear()


# The process-wide counter used by the pipeline; tests and train loops read `skip_counter.count`.
skip_counter = SkipCounter()


def handle_bad(err: DataError, reason: str, on_bad_sample: str) -> None:
  """Raises `err` in 'error' mode; logs and counts it in 'skip' mode."""
  if on_bad_sample == "skip":
    skip_counter.record(reason, str(err))
    return
  if on_bad_sample != "error":
    raise UserError(f"config.data.on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
  raise err
