"""What the command lines (train.py, eval.py, python -m spade_jax.convert) share: an expected user error ends the run
with one `error: ...` line instead of a traceback, and third-party INFO chatter (Orbax logs every checkpoint step,
JAX its backend probes) is hidden so that our own progress lines stand out. `--verbosity=1` (absl) or SPADE_VERBOSE=1
shows both again.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging as pylogging
import os
import sys

from absl import logging

VERBOSE_ENV = "SPADE_VERBOSE"
QUIET_LIBRARIES = ("orbax", "etils", "grain", "jax", "jaxlib", "tensorstore")
# The user's mistakes that our validation reports with a message saying what to fix (DataError and ConversionError
# are ValueErrors); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def verbose() -> bool:
  """--verbosity >= 1 (absl's flag, once parsed) or SPADE_VERBOSE set to anything but '' / '0'."""
  if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
    return True
  return logging.get_verbosity() >= 1


@contextlib.contextmanager
def user_errors(verbose_flag: bool = False):
  """Turns an expected user error into `error: <message>` on stderr and exit status 1 (traceback when verbose)."""
  try:
    yield
  except USER_ERRORS as e:
    if verbose_flag or verbose():
      raise
    logging.flush()
    sys.stderr.flush()
    message = str(e) or type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in message:
      message = f"{message}: {e.filename}"
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(1)


def _library_roots(names) -> tuple[str, ...]:
  roots = []
  for name in names:
    try:
      spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
      continue
    for loc in (spec.submodule_search_locations or []) if spec else []:
      roots.append(os.path.join(os.path.realpath(loc), ""))
  return tuple(roots)


class QuietLibraries(pylogging.Filter):
  """Drops INFO (and DEBUG) records of the QUIET_LIBRARIES; keeps their warnings and everything of ours.

  Libraries log either through their own stdlib loggers ('jax._src.xla_bridge') or through absl.logging, whose
  records all have the logger name 'absl' and the calling file as pathname (Orbax, also from its save threads)."""

  def __init__(self, names=QUIET_LIBRARIES):
    super().__init__()
    self.names = frozenset(names)
    self.roots = _library_roots(names)
    self._ours: dict[str, bool] = {}  # pathname -> not a quiet library's file

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.levelno >= pylogging.WARNING:  # stdlib levels (absl.logging.WARNING is absl's -1)
      return True
    if record.name.split(".")[0] in self.names:
      return False
    ours = self._ours.get(record.pathname)
    if ours is None:
      ours = not os.path.realpath(record.pathname or "").startswith(self.roots)
      self._ours[record.pathname] = ours
    return ours


def quiet_libraries() -> None:
  """Installs QuietLibraries on absl's handler (every record reaches it, whichever logger and thread), unless
  verbose. Call after flag parsing."""
  if verbose():
    return
  handler = logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())
