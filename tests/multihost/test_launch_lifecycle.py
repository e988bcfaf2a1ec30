"""The launcher's and the supervisor's life cycle with plain Python children (no JAX, no training, a few seconds
each): processes die with a launcher or supervisor killed by SIGKILL, SIGTERM / SIGHUP stop them cleanly, the
dead-peer message quotes whole words, and a user's mistake ends with one `error:` line and exit status 2."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from spade_jax import launch
from spade_jax.errors import EXIT_USER_ERROR
from tests.conftest import REPO

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# A stand-in for train.py: under the launcher (JAX_* set, no SPADE_JAX_SUPERVISED) it supervises itself, as train.py
# does; the "trainer" writes its pid, records the signals it gets and, as a preemption does, stops with exit 0 at
# SIGTERM (or ignores it with "ignore"), or ends as argv[2] says.
CHILD = """
import os, pathlib, signal, sys, time
sys.path.insert(0, {repo!r})
from spade_jax import launch
d, mode, i = pathlib.Path(sys.argv[1]), sys.argv[2], os.environ.get("JAX_PROCESS_ID", "0")
def put(name, text):  # whole or not at all: the test polls for these files
  (d / f".{{name}}").write_text(text)
  os.replace(d / f".{{name}}", d / name)
if mode.startswith("supervised") and launch.should_supervise():
  put(f"sup{{i}}", str(os.getpid()))
  sys.exit(launch.supervise(d))
def stop(signum, frame):
  put(f"got{{i}}", signal.Signals(signum).name)
  if not mode.endswith("ignore"):
    time.sleep(0.5)  # saving a checkpoint
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
put(f"pid{{i}}", str(os.getpid()))
if mode.endswith("user_error"):
  print("loading the config", file=sys.stderr, flush=True)
  print("error: retrying is not an error line a user error ends with", file=sys.stderr, flush=True)
  print(f"still going in process {{i}}", file=sys.stderr, flush=True)
  print("error: config.train.batch_size=3 must be divisible by the 2 devices (e.g. 2)", file=sys.stderr)
  sys.exit(2)
if mode.endswith("peer_gone"):
  sys.stderr.write(os.environ["PEER_GONE_LINE"] + "\\n")
  sys.exit(1)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
  """Running (a zombie waiting for init to reap it counts as gone)."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except FileNotFoundError:
    return False
  return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(cond, timeout: float) -> bool:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if cond():
      return True
    time.sleep(0.02)
  return cond()


def _env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in (launch.SUPERVISED_ENV, *launch.COORDINATOR_VARS, *launch.CLUSTER_VARS)}
  return dict(env, PYTHONPATH=str(REPO), **extra)


def _pids(d: pathlib.Path, prefix: str) -> list[int]:
  return [int(p.read_text()) for p in sorted(d.glob(f"{prefix}*"))]


@pytest.fixture
def child(tmp_path):
  """(script, its folder); kills whatever pid it recorded that is still running when the test ends."""
  work = tmp_path / "run"
  work.mkdir()
  script = tmp_path / "child.py"
  script.write_text(CHILD.format(repo=str(REPO)))
  yield script, work
  for pid in _pids(work, "pid") + _pids(work, "sup"):
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def _launcher(script, work, mode, *flags, processes=2):
  log = open(work.parent / "launch.log", "wb")
  proc = subprocess.Popen([sys.executable, "-m", "spade_jax.launch", f"--processes={processes}", *flags, "--",
                           str(script), str(work), mode], cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
  return proc, work.parent / "launch.log"


def _started(proc, work, log, processes, supervised):
  want = processes * (2 if supervised else 1)
  _wait(lambda: len(_pids(work, "pid")) + len(_pids(work, "sup")) == want or proc.poll() is not None, 30)
  assert len(_pids(work, "pid")) + len(_pids(work, "sup")) == want, log.read_text()
  return _pids(work, "pid") + _pids(work, "sup")


@linux_only
@pytest.mark.parametrize("mode", ["plain", "supervised"])
def test_sigkill_of_the_launcher_ends_its_processes(child, mode):
  """Before: the processes (and a supervisor's trainer) were re-parented and trained on silently for minutes."""
  script, work = child
  proc, log = _launcher(script, work, mode)
  pids = _started(proc, work, log, 2, mode == "supervised")
  killed = time.time()
  proc.kill()
  proc.wait(timeout=10)
  assert _wait(lambda: not any(map(_alive, pids)), 5), [p for p in pids if _alive(p)]
  print(f"{mode}: {len(pids)} processes gone {time.time() - killed:.2f}s after SIGKILL of the launcher")


@linux_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_and_sighup_of_the_launcher_ask_every_process_to_stop(child, sig):
  """Forwarded as SIGTERM (preemption: checkpoint and exit 0) through the supervisor to the trainer; the launcher
  exits when they have. Before: SIGHUP killed the launcher alone and left the processes running. A closing terminal
  may send SIGHUP twice (the kernel, then the shell): the second does not kill them mid-checkpoint."""
  script, work = child
  proc, log = _launcher(script, work, "supervised")
  pids = _started(proc, work, log, 2, True)
  os.kill(proc.pid, sig)
  if sig == signal.SIGHUP:
    time.sleep(0.2)
    os.kill(proc.pid, sig)
  assert proc.wait(timeout=20) == 0, log.read_text()
  assert sorted(p.read_text() for p in work.glob("got*")) == ["SIGTERM", "SIGTERM"], log.read_text()
  assert f"[launch] {sig.name}: asking every process to checkpoint and stop" in log.read_text()
  assert _wait(lambda: not any(map(_alive, pids)), 5)


@linux_only
def test_processes_that_do_not_stop_are_killed_after_the_grace_period(child):
  script, work = child
  proc, log = _launcher(script, work, "ignore", "--grace=1")
  pids = _started(proc, work, log, 2, False)
  t0 = time.time()
  os.kill(proc.pid, signal.SIGHUP)
  rc = proc.wait(timeout=20)
  assert rc == 128 + signal.SIGKILL and time.time() - t0 < 10, (rc, log.read_text())
  assert sorted(p.read_text() for p in work.glob("got*")) == ["SIGTERM", "SIGTERM"]  # asked first
  assert "[launch] killing the processes still running" in log.read_text()
  assert not any(map(_alive, pids))


def _supervisor(script, work, mode, **env):
  """The supervised stand-in as one process of a real multi-host job: no launcher, the JAX variables set."""
  env = _env(JAX_COORDINATOR_ADDRESS="127.0.0.1:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0", **env)
  return subprocess.Popen([sys.executable, str(script), str(work), mode], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@linux_only
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=lambda s: s.name)
def test_supervisor_sigkill_ends_the_trainer_and_sighup_is_forwarded(child, sig):
  script, work = child
  sup = _supervisor(script, work, "supervised")
  assert _wait(lambda: _pids(work, "pid"), 30), sup.stderr.read() if sup.poll() is not None else "not started"
  (trainer,) = _pids(work, "pid")
  os.kill(sup.pid, sig)
  rc = sup.wait(timeout=20)
  assert _wait(lambda: not _alive(trainer), 5)
  if sig == signal.SIGHUP:
    assert rc == 0 and (work / "got0").read_text() == "SIGTERM"
  else:
    assert not (work / "got0").exists()  # killed with it, as the peers are when a host dies


def test_dead_peer_message_quotes_whole_words(child):
  """Before: the last 160 characters of the line, e.g. `(ror [127.0.0.1]:40251: Connection reset by peer)`."""
  script, work = child
  line = ("jaxlib._jax.XlaRuntimeError: INTERNAL: Rendezvous of all-reduce for key step_17_all-reduce.3_4fd2c1e0 "
          "failed after waiting for the 2 participants: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/"
          "pair.cc:534] Read error [127.0.0.1]:40251: Connection reset by peer")
  assert line[-160:][:1] != " " and line[-161] != " "  # what a cut by characters made of it: mid-word
  sup = _supervisor(script, work, "supervised_peer_gone", PEER_GONE_LINE=line)
  _, err = sup.communicate(timeout=30)
  err = err.decode()
  assert sup.returncode == 1, err
  detail = err.split("stopped because a peer process is gone (", 1)[1].split("); a multi-host job", 1)[0]
  assert "Connection reset by peer" in detail, detail
  words = line.split()
  shown = detail.removeprefix("...").removesuffix("...").split()
  assert any(words[i:i + len(shown)] == shown for i in range(len(words))), (detail, line)  # whole words only
  assert detail == "...Read error [127.0.0.1]:40251: Connection reset by peer", detail  # its sentence


def test_dead_peer_detail_from_jax_abort():
  abort = ("F0312 10:00:00.123456  1234 client.cc:77] Terminating process because the JAX distributed service "
           "detected fatal errors. This most likely indicates that another task died; see the other task logs for "
           "more details. Disable Python buffering, i.e. `python -u`, to be sure to see all the previous output. "
           "absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n")
  for task in ("1\n", "/job:jax_worker/replica:0/task:1\n"):
    assert launch.peer_gone_detail(["step 5\n", abort, task, "The tasks have crashed.\n"]) == \
        "no heartbeat from process 1"
  detail = launch.peer_gone_detail([abort])
  assert detail.startswith("Terminating process because the JAX distributed service detected fatal errors.")
  assert detail.endswith("...") and len(detail) <= 250 and abort.replace("\n", "").find(detail[:-3]) > 0
  assert launch.peer_gone_detail(["an unrelated error\n"]) is None
  assert launch.excerpt("short: Connection closed by peer", "Connection closed by peer") == \
      "short: Connection closed by peer"


@pytest.mark.parametrize("args, names", [
    (["--processes=0", "--", "train.py"], "--processes=0"),
    (["--devices_per_process=-2", "--", "train.py"], "--devices_per_process=-2"),
    (["--devices_per_process=four", "--", "train.py"], "'four'"),
    (["--", "no_such_script.py", "--workdir=x"], "no_such_script.py"),
    (["--", "no-such-program-spade"], "no-such-program-spade"),
    (["--processes=2"], "no command"),
    (["--port=70000", "--", "train.py"], "--port=70000"),
])
def test_a_mistake_in_the_launchers_arguments_is_one_error_line(args, names):
  out = subprocess.run([sys.executable, "-m", "spade_jax.launch", *args], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=30)
  lines = out.stderr.splitlines()
  assert out.returncode == EXIT_USER_ERROR and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  assert names in lines[0] and "Traceback" not in out.stderr and not out.stdout


def test_a_user_error_in_every_process_is_shown_once(child):
  """Each (supervised) process ends with the same `error:` line and exit status 2: the launcher shows it once,
  last, without a [pN] prefix, and exits 2; an `error:` line that is not the last one is copied as it came."""
  script, work = child
  proc, log = _launcher(script, work, "supervised_user_error", "--grace=5")
  assert proc.wait(timeout=30) == EXIT_USER_ERROR, log.read_text()
  lines = log.read_text().splitlines()
  error = "error: config.train.batch_size=3 must be divisible by the 2 devices (e.g. 2)"
  assert lines[-1] == error and sum(error in x for x in lines) == 1, "\n".join(lines)
  for i in (0, 1):  # the other lines, in order, with their prefix; the supervisor adds no checkpoint note
    mine = [x for x in lines if x.startswith(f"[p{i}] ") and "[launch]" not in x]
    assert mine == [f"[p{i}] loading the config", f"[p{i}] error: retrying is not an error line a user error ends "
                    "with", f"[p{i}] still going in process {i}"], "\n".join(lines)
  assert "Traceback" not in log.read_text() and "spade_jax: process" not in log.read_text()


def test_fail_fast_ends_a_user_error_with_one_line_and_exit_status_2():
  """With several processes fail_fast ends the process at once (os._exit); a user error as one `error:` line and
  exit status 2, not a logged traceback and 1. Stands in for process_count() > 1 without starting a job."""
  code = ("import jax; jax.process_count = lambda: 2\n"
          "from spade_jax import parallel\n"
          "from spade_jax.errors import UserError\n"
          "with parallel.fail_fast():\n"
          "  raise UserError('config.train.batch_size=3: give a multiple of 2\\n (e.g. 2)')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == EXIT_USER_ERROR, out.stderr
  assert out.stderr.strip().splitlines()[-1] == "error: config.train.batch_size=3: give a multiple of 2 (e.g. 2)"
  assert "Traceback" not in out.stderr, out.stderr


@linux_only
def test_a_child_whose_parent_died_before_prctl_stops_itself():
  """The race die_with_parent closes: prctl in a child whose parent is already gone would wait for a death that
  has happened. Here the recorded parent is the grandparent, as if the parent had died and the child been
  re-parented before prctl ran."""
  code = ("import os, signal, sys\n"
          "from spade_jax import launch\n"
          "pre = launch.die_with_parent(signal.SIGTERM)\n"
          "if os.fork() == 0:\n"
          "  child = os.fork()\n"
          "  if child == 0:\n"
          "    pre()\n"
          "    os._exit(0)\n"
          "  _, status = os.waitpid(child, 0)\n"
          "  os._exit(7 if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM else 0)\n"
          "_, status = os.wait()\n"
          "sys.exit(os.WEXITSTATUS(status))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=30)
  assert out.returncode == 7, out.stderr


@pytest.mark.slow
def test_train_py_with_a_batch_that_does_not_split_ends_with_one_error_line(tmp_path):
  """The real chain, launcher -> supervisor -> trainer (2 processes joined by jax.distributed), stopped by a
  user error before any compilation (a few seconds): exit status 2 and the error once, last, no traceback."""
  out = subprocess.run([sys.executable, "-m", "spade_jax.launch", "--processes=2", "--heartbeat_timeout=10",
                        "--grace=20", "--", "train.py", f"--config={REPO / 'configs' / 'demo.py'}",
                        f"--workdir={tmp_path}", "--config.train.batch_size=3"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
  lines = out.stderr.splitlines()
  assert out.returncode == EXIT_USER_ERROR and lines[-1].startswith("error: "), out.stderr[-3000:]
  assert "batch_size=3" in lines[-1] and sum(x.startswith("error: ") for x in lines) == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr and not any(x.startswith("[p") and "error:" in x for x in lines), \
      out.stderr[-6000:]  # once seen failing under a loaded 2-core suite run (not reproduced in 18 tries, 4 at a time)
