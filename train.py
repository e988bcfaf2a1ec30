"""Train SPADE: python train.py --config=configs/cityscapes.py --workdir=DIR [--config.x.y=v ...]

Resumes from DIR's latest checkpoint by itself. Multi-host: launch one process per host (see README).
A user's mistake (a config key that does not exist, a bad value, a missing data folder, a workdir another run is
using) ends with one `error: ...` line and exit status 2; --verbosity=1 shows its traceback and the INFO lines of
Orbax / JAX / Grain, hidden by default.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from spade_jax import cli
  cli.quiet_libraries()
  from spade_jax import launch
  if launch.should_supervise():  # one of several processes: train in a child, report how it ended (see launch)
    sys.exit(launch.supervise(_WORKDIR.value))
  with cli.user_errors():
    from spade_jax import config as spade_config
    spade_config.validate(_CONFIG.value)  # every bad key named now, before JAX starts
    from spade_jax import parallel
    parallel.maybe_initialize_distributed()
    from spade_jax.training.loop import train_and_evaluate
    logging.info("config:\n%s", _CONFIG.value)
    with parallel.fail_fast():
      train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  from spade_jax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
