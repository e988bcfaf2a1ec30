"""What the command lines (train.py, eval.py, python -m spade_jax.convert / serve / launch / aot) share: a user's
mistake (`spade_jax.errors.UserError`, or a missing file) ends the run with one `error: ...` line and exit status 2
instead of a traceback, and third-party INFO chatter (Orbax logs every checkpoint step, JAX its backend probes) is
hidden so that our own progress lines stand out. `--verbosity=1` (absl) or SPADE_VERBOSE=1 shows both again.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging as pylogging
import os
import re
import sys

from absl import logging

from spade_jax.errors import EXIT_USER_ERROR, USER_ERRORS, message_of, verbose, write_error_line

QUIET_LIBRARIES = ("orbax", "etils", "grain", "jax", "jaxlib", "tensorstore")


def fail(message: str) -> None:
  """Ends the process with `error: <message>` (one line) and exit status 2."""
  write_error_line(message)
  sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def user_errors(verbose_flag: bool = False):
  """Turns a user error into `error: <message>` on stderr and exit status 2 (its traceback when verbose)."""
  try:
    yield
  except USER_ERRORS as e:
    if verbose_flag or verbose():
      raise
    fail(message_of(e))


def _argv_verbose(argv) -> bool:
  return verbose() or any(re.fullmatch(r"--(verbosity|v)=([1-9]\d*)", a) for a in argv)


def _config_file_of(argv) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1].split(":", 1)[0]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def _override_error(config, argv) -> str | None:
  """The one line for a --config.x.y override naming a key the config does not have (ml_collections says it in an
  AttributeError around a KeyError, with the suggestion buried in a quoted string)."""
  for a in argv:
    if not a.startswith("--config."):
      continue
    dotted = a[len("--config."):].split("=", 1)[0]
    section, path = config, []
    for part in dotted.split("."):
      keys = list(section.keys()) if hasattr(section, "keys") else []
      if part not in keys:
        where = ".".join(path) or "the config"
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f"did you mean {'.'.join([*path, close[0]])}?" if close else f"{where} has {', '.join(keys)}"
        return f"--config.{dotted}: {where} has no key {part!r}; {hint}"
      section, path = section[part], [*path, part]
  return None


def parse_flags(argv):
  """absl's flag parsing for app.run(flags_parser=...), with a user's mistake in a flag or in the config file ending
  as one `error:` line (exit 2): a config file that does not exist or raises, an override of a key the config does
  not have, a value of the wrong type."""
  from absl import flags
  config_file, config = _config_file_of(argv), None
  if config_file is not None and not _argv_verbose(argv):
    if not os.path.isfile(config_file):
      fail(f"--config={config_file}: no such config file (give a path such as configs/demo.py)")
    try:
      from spade_jax import config as spade_config
      config = spade_config.from_file(config_file)
    except Exception as e:  # noqa: BLE001  (the user's file: any exception is theirs; --verbosity=1 shows it)
      fail(f"--config={config_file}: the config file raised {type(e).__name__}: {e} (run with --verbosity=1 for "
           "its traceback)")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{e} (see --helpshort)")
  except (AttributeError, KeyError):
    line = None if config is None else _override_error(config, argv)
    if line is None:
      raise
    fail(line)


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
  """Drops INFO (and DEBUG) records of the QUIET_LIBRARIES; keeps their warnings and errors (without the
  traceback: a failed Orbax save logs one per thread) and everything of ours.

  Libraries log either through their own stdlib loggers ('jax._src.xla_bridge') or through absl.logging, whose
  records all have the logger name 'absl' and the calling file as pathname (Orbax, also from its save threads)."""

  def __init__(self, names=QUIET_LIBRARIES):
    super().__init__()
    self.names = frozenset(names)
    self.roots = _library_roots(names)
    self._ours: dict[str, bool] = {}  # pathname -> not a quiet library's file

  def filter(self, record: pylogging.LogRecord) -> bool:
    ours = self._ours.get(record.pathname)
    if ours is None:
      ours = not os.path.realpath(record.pathname or "").startswith(self.roots)
      self._ours[record.pathname] = ours
    ours = ours and record.name.split(".")[0] not in self.names
    if record.levelno >= pylogging.WARNING:  # stdlib levels (absl.logging.WARNING is absl's -1)
      if not ours and record.exc_info:  # a library's error: its message, its traceback one flag away
        record.exc_info, record.exc_text = None, None
      return True
    return ours


def _quiet_unraisable(previous):
  """sys.unraisablehook that drops the 'Event loop is closed' RuntimeErrors of Orbax's / TensorStore's background
  callbacks that fire after the interpreter closed their loop (five tracebacks after a failed restore, else)."""
  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
      return
    previous(unraisable)
  hook.quiet = True
  return hook


def quiet_libraries() -> None:
  """Installs QuietLibraries on absl's handler (every record reaches it, whichever logger and thread) and silences
  the libraries' exit-time noise, unless verbose. Call after flag parsing."""
  if verbose():
    return
  if not getattr(sys.unraisablehook, "quiet", False):
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())
