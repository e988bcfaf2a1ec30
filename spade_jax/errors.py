"""The one exception type for a user's mistake: a bad config value, a missing or damaged file, a workdir in use.

Its message names the bad value or file and says what to do. The command lines (spade_jax.cli) turn this type, and
only this type (plus a missing file), into one `error: ...` line with exit status 2; any other exception is a bug
and keeps its traceback. It is a ValueError, so `except ValueError` written against older versions still catches it.
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["UserError", "EXIT_USER_ERROR", "USER_ERRORS", "VERBOSE_ENV", "ArgumentParser", "verbose", "message_of",
           "write_error_line"]

EXIT_USER_ERROR = 2  # the exit status of a user mistake (argparse and absl use 2 for bad usage too)
VERBOSE_ENV = "SPADE_VERBOSE"


class UserError(ValueError):
  """A mistake the user can fix; the message says what is wrong and how."""


# What the command lines turn into one line: our own UserErrors, and a file or folder that is not there.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError)


def verbose() -> bool:
  """--verbosity >= 1 (absl's flag, once parsed) or SPADE_VERBOSE set to anything but '' / '0': tracebacks shown."""
  if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
    return True
  from absl import logging
  return logging.get_verbosity() >= 1


def message_of(e: BaseException) -> str:
  message = str(e) or type(e).__name__
  if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
    message = f"{message}: {e.filename}"
  return message


def write_error_line(message: str) -> None:
  """`error: <message>` as one line on stderr, after whatever the logs and stdout still hold."""
  from absl import logging
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")
  sys.stderr.flush()


class ArgumentParser(argparse.ArgumentParser):
  """argparse for our command lines: a bad flag raises UserError (one `error:` line naming it and `--help`)
  instead of printing the usage text above argparse's own error line."""

  def error(self, message):
    raise UserError(f"{message} (see {self.prog} --help)")
