"""python -m spade_jax.convert: a user error ends with one `error: ...` line (the traceback with -v / --verbose)."""
from spade_jax.convert.cli import run

if __name__ == "__main__":
  run()
