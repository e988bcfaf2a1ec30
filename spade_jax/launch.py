"""N processes on one machine as one multi-host JAX job: rehearse a pod run on a laptop before paying for the pod.

  python -m spade_jax.launch --processes=2 --devices_per_process=4 -- train.py --config=configs/demo.py \
      --workdir=runs/mh

Each process gets what `parallel.maybe_initialize_distributed` reads (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), its own CPU devices (JAX_NUM_CPU_DEVICES) and gloo collectives, so it runs the code path of a pod:
jax.distributed, per-host data shards, cross-process collectives, Orbax writing from every process. Output lines
carry a [pN] prefix. When a process fails, the others get --grace seconds to stop by themselves (a peer that is gone
stops them within the heartbeat timeout, with the reason), then are killed: none is left waiting on a dead peer.
Ctrl-C (or SIGTERM) asks every process to checkpoint and stop, as a preemption does; a second Ctrl-C kills them.

This module imports no JAX: `supervise` also runs in front of every process of a real multi-host job (train.py
calls it). JAX stops a process whose peer is gone with a C++ abort that Python cannot catch; the supervisor, a
parent process that only forwards signals and copies stderr, then says what happened and which checkpoint to
resume from.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

COORDINATOR_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
CLUSTER_VARS = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")  # jax finds its peers itself there
SUPERVISED_ENV = "SPADE_JAX_SUPERVISED"  # set in the supervised child; "0" in the environment: no supervisor
HEARTBEAT_ENV = "SPADE_JAX_HEARTBEAT_TIMEOUT"  # read by parallel.heartbeat_timeout()
# How a lost peer shows in a process's stderr: JAX's abort once the coordination service misses its heartbeats (or
# loses the coordinator), a barrier that fails for the same reason, or a collective whose connection the dead peer's
# kernel closed (gloo on CPU).
_PEER_GONE = ("JAX distributed service detected fatal errors", "stopped sending heartbeats",
              "Connection closed by peer", "Connection reset by peer")


def _log(msg: str) -> None:
  sys.stderr.write(msg + "\n")
  sys.stderr.flush()


def multiprocess_env() -> bool:
  """Whether this process is to join a multi-host job (what parallel.maybe_initialize_distributed will do)."""
  env = [os.environ.get(k) for k in COORDINATOR_VARS]
  if all(env):
    return int(env[1]) > 1
  return any(os.environ.get(k) for k in CLUSTER_VARS)


def last_complete_checkpoint(workdir) -> int | None:
  """The newest finished checkpoint step in workdir/checkpoints, read from the file system alone (no JAX, no
  Orbax: the supervisor asks after the trainer is gone). Orbax writes a step into a temporary folder and renames it
  when every process is done (and adds commit_success.txt on object stores), so a plain number is complete."""
  from etils import epath
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return None
  local = not re.match(r"^\w+://", str(directory))
  steps = [int(p.name) for p in directory.iterdir()
           if p.name.isdigit() and (local or (p / "commit_success.txt").exists())]
  return max(steps, default=None)


def checkpoint_note(workdir) -> str:
  step = last_complete_checkpoint(workdir)
  where = f"{workdir}/checkpoints"
  if step is None:
    return f"No checkpoint was completed in {where}: a restart starts from scratch."
  return (f"The last complete checkpoint is step {step} in {where}; restart all processes with the same command "
          "to resume from it.")


def _die_with_parent() -> None:
  """In the child, before exec: Linux kills it when the supervisor dies (SIGKILL included), so it never trains on
  alone (the peers then see it gone)."""
  libc = ctypes.util.find_library("c")
  if libc and sys.platform.startswith("linux"):
    ctypes.CDLL(libc, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def should_supervise() -> bool:
  return multiprocess_env() and os.environ.get(SUPERVISED_ENV) is None


def supervise(workdir) -> int:
  """Runs this same command again as a child and waits for it; returns the exit status for this process.

  The child does the work; this parent forwards SIGTERM (preemption: the child checkpoints with its peers and
  exits 0) and SIGINT (the first as SIGTERM, a second as SIGKILL), copies the child's stderr and, when the child
  stops abnormally, says why and which checkpoint in `workdir` a restart resumes from: a peer process that is gone
  (JAX's coordination service aborts the survivors after its heartbeat timeout), a signal, or an error.
  """
  env = dict(os.environ, **{SUPERVISED_ENV: "1"})
  child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env, stderr=subprocess.PIPE,
                           process_group=0, preexec_fn=_die_with_parent)
  interrupts = []

  def forward(signum, frame):
    del frame
    if signum == signal.SIGINT:
      interrupts.append(signum)
    child.send_signal(signal.SIGKILL if len(interrupts) > 1 else signal.SIGTERM)

  for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, forward)
  tail = collections.deque(maxlen=200)
  reader = threading.Thread(target=_copy, args=(child.stderr, sys.stderr.buffer, b"", threading.Lock(), tail),
                            daemon=True)
  reader.start()
  rc = child.wait()
  reader.join(timeout=5)  # its last lines (a data worker it started may hold the pipe open longer)
  if rc == 0:
    return 0
  who = f"process {os.environ.get('JAX_PROCESS_ID', '?')}"
  seen = [line.strip() for line in tail if any(m in line for m in _PEER_GONE)]
  if seen:
    silent = re.search(r"tasks are unhealthy[^\n]*\n\s*([\d, ]+)", "".join(tail))
    detail = f"no heartbeat from process {silent.group(1).strip()}" if silent else seen[-1][-160:]
    _log(f"spade_jax: {who} stopped because a peer process is gone ({detail}); a multi-host job cannot go on "
         f"without it. {checkpoint_note(workdir)}")
    return 1
  if rc < 0:
    _log(f"spade_jax: {who} was killed by {signal.Signals(-rc).name}. {checkpoint_note(workdir)}")
    return 128 - rc
  _log(f"spade_jax: {who} stopped with an error (exit status {rc}, above). {checkpoint_note(workdir)}")
  return rc


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _copy(stream, out, prefix: bytes, lock, tail=None) -> None:
  for line in stream:
    with lock:
      out.write(prefix + line)
      out.flush()
    if tail is not None:
      tail.append(line.decode(errors="replace"))


def _describe(rc: int) -> str:
  return f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m spade_jax.launch", description=__doc__.split("\n\n")[0],
                              usage="%(prog)s [options] -- train.py --config=... --workdir=...")
  p.add_argument("--processes", type=int, default=2, help="processes (simulated hosts)")
  p.add_argument("--devices_per_process", type=int, default=1, help="CPU devices of each process")
  p.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  p.add_argument("--heartbeat_timeout", type=int, default=None,
                 help=f"seconds after which a silent process counts as dead (default: ${HEARTBEAT_ENV} or 100)")
  p.add_argument("--grace", type=float, default=None,
                 help="seconds the others get to stop by themselves once one failed (default: heartbeat timeout + 30)")
  p.add_argument("command", nargs=argparse.REMAINDER, help="the command each process runs (a .py file: with python)")
  args = p.parse_args(argv)
  cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not cmd:
    p.error("no command: put it after --, e.g. -- train.py --config=configs/demo.py --workdir=runs/mh")
  if cmd[0].endswith(".py"):
    cmd = [sys.executable, *cmd]
  n = args.processes
  heartbeat = args.heartbeat_timeout or int(os.environ.get(HEARTBEAT_ENV) or 100)
  grace = args.grace if args.grace is not None else heartbeat + 30
  port = args.port or _free_port()
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
  base = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(args.devices_per_process),
              JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags,
              **{HEARTBEAT_ENV: str(heartbeat)})
  _log(f"[launch] {n} processes x {args.devices_per_process} CPU devices, coordinator 127.0.0.1:{port}, heartbeat "
       f"timeout {heartbeat}s: {' '.join(cmd)}")
  procs, threads, lock = [], [], threading.Lock()
  for i in range(n):
    env = dict(base)
    if n > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    procs.append(proc)
    for stream, out in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
      t = threading.Thread(target=_copy, args=(stream, out, f"[p{i}] ".encode(), lock), daemon=True)
      t.start()
      threads.append(t)
    _log(f"[launch] process {i}: pid {proc.pid}")

  def kill_all():
    for proc in procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass

  interrupts = []

  def on_signal(signum, frame):
    del frame
    interrupts.append(signum)
    if len(interrupts) == 1:
      _log("[launch] asking every process to checkpoint and stop (again: kill them)")
      for proc in procs:
        if proc.poll() is None:
          proc.send_signal(signal.SIGTERM)
    else:
      kill_all()

  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, on_signal)
  failed, deadline, reported = None, None, set()
  while any(proc.poll() is None for proc in procs):
    for i, proc in enumerate(procs):
      rc = proc.poll()
      if rc is None or i in reported:
        continue
      reported.add(i)
      _log(f"[launch] process {i} finished: {_describe(rc)}")
      if rc != 0 and failed is None:
        failed, deadline = rc, time.time() + grace
        _log(f"[launch] process {i} failed; the others get {grace:.0f}s to stop by themselves, then are killed")
    if deadline is not None and time.time() > deadline:
      _log("[launch] killing the processes still running")
      kill_all()
      deadline = None
    time.sleep(0.1)
  for i, proc in enumerate(procs):
    if i not in reported:
      _log(f"[launch] process {i} finished: {_describe(proc.returncode)}")
      if proc.returncode != 0 and failed is None:
        failed = proc.returncode
  for t in threads:
    t.join(timeout=5)
  if failed is None:
    return 0
  return failed if failed > 0 else 128 - failed


if __name__ == "__main__":
  sys.exit(main())
