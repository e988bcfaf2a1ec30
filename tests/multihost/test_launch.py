"""The local launcher and the supervisor's checkpoint lookup, with plain Python children (no JAX): environment,
prefixed output, and no process left waiting when another fails."""
import subprocess
import sys
import time

from spade_jax import launch
from tests.conftest import REPO

CHILD = """
import os, sys, time
env = {k: os.environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                                      "JAX_NUM_CPU_DEVICES", "JAX_PLATFORMS", "SPADE_JAX_HEARTBEAT_TIMEOUT")}
print("env", sorted(env.items()), flush=True)
if env["JAX_PROCESS_ID"] == "1":
  sys.exit(3)
time.sleep(120)  # a peer waiting on the failed one
"""


def test_launcher_sets_up_processes_and_stops_the_rest_when_one_fails(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  t0 = time.time()
  out = subprocess.run([sys.executable, "-m", "spade_jax.launch", "--processes=2", "--devices_per_process=3",
                        "--heartbeat_timeout=7", "--grace=1", "--", str(script)], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
  assert time.time() - t0 < 30 and out.returncode == 3, out.stderr
  for i in (0, 1):
    line = next(x for x in out.stdout.splitlines() if x.startswith(f"[p{i}] env"))
    for value in ("'JAX_NUM_PROCESSES', '2'", f"'JAX_PROCESS_ID', '{i}'", "'JAX_NUM_CPU_DEVICES', '3'",
                  "'JAX_PLATFORMS', 'cpu'", "'SPADE_JAX_HEARTBEAT_TIMEOUT', '7'",
                  "'JAX_COORDINATOR_ADDRESS', '127.0.0.1:"):
      assert value in line, line
  assert "[launch] process 1 finished: exit status 3" in out.stderr
  assert "[launch] process 0 finished: signal SIGKILL" in out.stderr  # not left waiting for its dead peer


def test_last_complete_checkpoint_ignores_unfinished_writes(tmp_path):
  assert launch.last_complete_checkpoint(tmp_path) is None
  assert "No checkpoint was completed" in launch.checkpoint_note(tmp_path)
  for name in ("2", "4", "6.orbax-checkpoint-tmp-1234", "tb"):
    (tmp_path / "checkpoints" / name).mkdir(parents=True)
  assert launch.last_complete_checkpoint(tmp_path) == 4
  assert f"step 4 in {tmp_path}/checkpoints" in launch.checkpoint_note(tmp_path)
