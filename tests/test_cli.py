"""The command lines end expected user errors with one `error:` line (no traceback; it fails before any JAX
compilation), and hide third-party INFO chatter unless asked (spade_jax.cli)."""
import logging
import os
import subprocess
import sys

import pytest

from spade_jax import cli
from spade_jax.errors import VERBOSE_ENV
from tests.conftest import REPO


def _run(args, tmp_path, **env):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", VERBOSE_ENV)} | {
      "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **env}
  return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _assert_one_error_line(r, *needles):
  assert r.returncode != 0, r.stderr[-3000:]
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, r.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]


def test_train_py_missing_data_folder(tmp_path):
  missing = tmp_path / "no_such_data"
  r = _run([str(REPO / "train.py"), f"--config={REPO / 'configs' / 'custom.py'}", f"--workdir={tmp_path / 'run'}",
            f"--config.data.root={missing}"], tmp_path)
  _assert_one_error_line(r, str(missing))


def test_train_py_bad_config_value(tmp_path):
  r = _run([str(REPO / "train.py"), f"--config={REPO / 'configs' / 'custom.py'}", f"--workdir={tmp_path / 'run'}",
            "--config.data.dataset=mnist"], tmp_path)
  _assert_one_error_line(r, "mnist")


def test_eval_py_empty_and_missing_workdir(tmp_path):
  (tmp_path / "empty").mkdir()
  _assert_one_error_line(_run([str(REPO / "eval.py"), f"--workdir={tmp_path / 'empty'}"], tmp_path),
                         "holds no checkpoint")
  _assert_one_error_line(_run([str(REPO / "eval.py"), f"--workdir={tmp_path / 'missing'}"], tmp_path),
                         "no checkpoint at")


def test_eval_py_verbose_shows_the_traceback(tmp_path):
  (tmp_path / "empty").mkdir()
  r = _run([str(REPO / "eval.py"), f"--workdir={tmp_path / 'empty'}", "--verbosity=1"], tmp_path)
  assert r.returncode != 0 and "Traceback" in r.stderr and "holds no checkpoint" in r.stderr
  r = _run([str(REPO / "eval.py"), f"--workdir={tmp_path / 'empty'}"], tmp_path, SPADE_VERBOSE="1")
  assert r.returncode != 0 and "Traceback" in r.stderr


def test_eval_py_takes_a_config_file_with_overrides(tmp_path):
  """--config is a config file with --config.x.y overrides, as in train.py (the workdir error comes after)."""
  r = _run([str(REPO / "eval.py"), f"--workdir={tmp_path}", f"--config={REPO / 'configs' / 'demo.py'}",
            "--config.data.root=/elsewhere"], tmp_path)
  _assert_one_error_line(r, "holds no checkpoint")
  r = _run([str(REPO / "eval.py"), f"--workdir={tmp_path}", f"--config={REPO / 'configs' / 'demo.py'}",
            "--config.data.no_such_key=1"], tmp_path)
  assert r.returncode != 0 and "no_such_key" in r.stderr


def test_convert_missing_file_from_another_folder(tmp_path):
  """python -m spade_jax.convert needs nothing from the repository's configs/ folder (run elsewhere)."""
  r = _run(["-m", "spade_jax.convert", f"--generator={tmp_path / 'G.pth'}", "--preset=coco_stuff",
            f"--out={tmp_path / 'out'}"], tmp_path)
  _assert_one_error_line(r, "G.pth")
  r = _run(["-m", "spade_jax.convert", f"--generator={tmp_path / 'G.pth'}", "--preset=nope",
            f"--out={tmp_path / 'out'}", "-v"], tmp_path)
  assert r.returncode != 0 and "Traceback" in r.stderr


def _record(pathname, level=logging.INFO, name="absl"):
  return logging.LogRecord(name, level, pathname, 1, "message", None, None)


def test_quiet_libraries_filter():
  import orbax.checkpoint
  f = cli.QuietLibraries()
  orbax_file = os.path.join(os.path.dirname(orbax.checkpoint.__file__), "checkpoint_manager.py")
  assert not f.filter(_record(orbax_file))                                   # absl.logging.info from orbax
  assert f.filter(_record(orbax_file, logging.WARNING))                      # its warnings stay
  assert not f.filter(_record("xla_bridge.py", name="jax._src.xla_bridge"))  # stdlib loggers of JAX
  assert f.filter(_record(str(REPO / "spade_jax" / "training" / "writer.py")))  # ours
  assert f.filter(_record(str(REPO / "train.py")))


@pytest.mark.parametrize("verbosity", [0, 1])
def test_quiet_libraries_only_when_not_verbose(verbosity, monkeypatch):
  from absl import logging as absl_logging
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  monkeypatch.setattr(absl_logging, "get_verbosity", lambda: verbosity)
  try:
    cli.quiet_libraries()
    added = [f for f in handler.filters if isinstance(f, cli.QuietLibraries)]
    assert len(added) == (verbosity < 1)
  finally:
    handler.filters[:] = before
