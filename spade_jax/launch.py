"""N processes on one machine as one multi-host JAX job: rehearse a pod run on a laptop before paying for the pod.

  python -m spade_jax.launch --processes=2 --devices_per_process=4 -- train.py --config=configs/demo.py \
      --workdir=runs/mh

Each process gets what `parallel.maybe_initialize_distributed` reads (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), its own CPU devices (JAX_NUM_CPU_DEVICES) and gloo collectives, so it runs the code path of a pod:
jax.distributed, per-host data shards, cross-process collectives, Orbax writing from every process. Output lines
carry a [pN] prefix. When a process fails, the others get --grace seconds to stop by themselves (a peer that is gone
stops them within the heartbeat timeout, with the reason), then are killed: none is left waiting on a dead peer.
Ctrl-C, SIGTERM or SIGHUP asks every process to checkpoint and stop, as a preemption does; those still running
--grace seconds later, or at a second Ctrl-C, are killed. On Linux the processes die with the launcher even when it
is killed by SIGKILL (PR_SET_PDEATHSIG), and a supervised trainer dies with its supervisor, so none trains on alone.
A mistake in the launcher's own arguments ends with one `error: ...` line and exit status 2; when the processes end
with a user error (exit status 2 and an `error: ...` line, e.g. a bad config value), that line is shown once, last,
and the launcher exits with 2 too.

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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from spade_jax.errors import EXIT_USER_ERROR, ArgumentParser, UserError

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
  try:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
  except (OSError, ValueError):  # a terminal that is gone (SIGHUP): the processes still get to stop cleanly
    pass


def multiprocess_env() -> bool:
  """Whether this process is to join a multi-host job (what parallel.maybe_initialize_distributed will do)."""
  env = [os.environ.get(k) for k in COORDINATOR_VARS]
  if all(env):
    return int(env[1]) > 1
  return any(os.environ.get(k) for k in CLUSTER_VARS)


def complete_steps(directory) -> list[int]:
  """The finished checkpoint steps in a checkpoints folder, read from the file system alone (no JAX, no Orbax: the
  supervisor asks after the trainer is gone; spade_jax.checkpoints reads steps through this too). Orbax writes a
  step into a temporary folder and renames it when every process is done (and adds commit_success.txt on object
  stores), so a plain number is complete; `<step>.damaged` folders are not steps."""
  from etils import epath
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  local = not re.match(r"^\w+://", str(directory))
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (local or (p / "commit_success.txt").exists()))


def last_complete_checkpoint(workdir) -> int | None:
  """The newest finished checkpoint step in workdir/checkpoints (see complete_steps)."""
  from etils import epath
  return max(complete_steps(epath.Path(workdir) / "checkpoints"), default=None)


def checkpoint_note(workdir) -> str:
  step = last_complete_checkpoint(workdir)
  where = f"{workdir}/checkpoints"
  if step is None:
    return f"No checkpoint was completed in {where}: a restart starts from scratch."
  return (f"The last complete checkpoint is step {step} in {where}; restart all processes with the same command "
          "to resume from it.")


_PR_SET_PDEATHSIG = 1
_prctl_fn = []


def _prctl():
  """libc's prctl (None off Linux), looked up in the parent: a child between fork and exec must not run programs
  (find_library does) or take locks another thread of the parent may have held at the fork."""
  if not sys.platform.startswith("linux"):
    return None
  if not _prctl_fn:
    fn = None
    for name in (lambda: None, lambda: ctypes.util.find_library("c")):  # None: this process's symbols, libc's too
      try:
        fn = ctypes.CDLL(name(), use_errno=True).prctl
        break
      except (OSError, AttributeError):
        continue
    _prctl_fn.append(fn)
  return _prctl_fn[0]


def die_with_parent(sig: int = signal.SIGKILL):
  """A preexec_fn for subprocess.Popen: on Linux the child gets `sig` when this process dies, SIGKILL included, so
  it never goes on alone (a trainer whose launcher or supervisor is gone; its peers then see it gone too). It holds
  through exec, and for a grandchild whose parent (a supervisor) was started with it as well: they die in a chain.

  Linux sends the signal when the *thread* that forked exits, so start children from the main thread (or one that
  lives as long as they do). A parent that died between the fork and the prctl sends nothing: the child checks for
  that and stops itself."""
  prctl, parent = _prctl(), os.getpid()

  def preexec():
    if prctl is None:
      return
    prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if os.getppid() != parent:  # re-parented already (to init or a subreaper)
      os.kill(os.getpid(), sig)

  return preexec


def should_supervise() -> bool:
  return multiprocess_env() and os.environ.get(SUPERVISED_ENV) is None


def supervise(workdir) -> int:
  """Runs this same command again as a child and waits for it; returns the exit status for this process.

  The child does the work; this parent forwards SIGTERM and SIGHUP (preemption: the child checkpoints with its
  peers and exits 0) and SIGINT (the first as SIGTERM, a second as SIGKILL), copies the child's stderr and, when
  the child stops abnormally, says why and which checkpoint in `workdir` a restart resumes from: a peer process that
  is gone (JAX's coordination service aborts the survivors after its heartbeat timeout), a signal, or an error. A
  user error (exit status 2 after an `error: ...` line) passes through as it is. On Linux the child dies with this
  parent, also when it is killed by SIGKILL. Call it from the main thread (see `die_with_parent`).
  """
  env = dict(os.environ, **{SUPERVISED_ENV: "1"})
  child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env, stderr=subprocess.PIPE,
                           process_group=0, preexec_fn=die_with_parent())
  interrupts = []

  def forward(signum, frame):
    del frame
    if signum == signal.SIGINT:
      interrupts.append(signum)
    child.send_signal(signal.SIGKILL if len(interrupts) > 1 else signal.SIGTERM)

  for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
  tail = collections.deque(maxlen=200)
  reader = threading.Thread(target=_copy, args=(child.stderr, sys.stderr.buffer, b"", threading.Lock(), tail),
                            daemon=True)
  reader.start()
  rc = child.wait()
  reader.join(timeout=5)  # its last lines (a data worker it started may hold the pipe open longer)
  if rc == 0:
    return 0
  if rc == EXIT_USER_ERROR and user_error_line(tail):
    return rc  # the child's own `error: ...` line says it all; a checkpoint note would only bury it
  who = f"process {os.environ.get('JAX_PROCESS_ID', '?')}"
  detail = peer_gone_detail(tail)
  if detail:
    _log(f"spade_jax: {who} stopped because a peer process is gone ({detail}); a multi-host job cannot go on "
         f"without it. {checkpoint_note(workdir)}")
    return 1
  if rc < 0:
    _log(f"spade_jax: {who} was killed by {signal.Signals(-rc).name}. {checkpoint_note(workdir)}")
    return 128 - rc
  _log(f"spade_jax: {who} stopped with an error (exit status {rc}, above). {checkpoint_note(workdir)}")
  return rc


_GLOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\]\s]+\] ")  # F0312 10:00:00.123456  1234 client.cc:77]


def excerpt(line: str, marker: str, limit: int = 240) -> str:
  """The part of a log line that says `marker`, at most about `limit` characters, cut only between words ("..."
  where cut), without glog's prefix: from the start of the sentence (or bracketed source location) that says it
  where that fits, so that a user reads whole words, e.g. `Read error [127.0.0.1]:4021: Connection reset by peer`
  rather than the `ror [127.0.0.1]...` a cut by characters gives."""
  line = " ".join(_GLOG_PREFIX.sub("", line.strip()).split())
  if len(line) <= limit:
    return line
  at = max(line.find(marker), 0) if marker else 0
  start = 0
  for sep in (". ", "; ", "] "):
    i = line.rfind(sep, 0, at)
    if i >= 0:
      start = max(start, i + len(sep))
  if at - start > limit // 2:  # a long sentence: the whole words before the marker that fill half the room
    i = line.find(" ", at - limit // 2, at)
    start = i + 1 if i >= 0 else line.rfind(" ", 0, at) + 1
  end = at + len(marker)
  if start + limit >= len(line):
    end = len(line)
  else:  # the whole words after it that fit
    i = line.rfind(" ", end, start + limit + 1)
    if i < 0:
      i = line.find(" ", end)
    end = len(line) if i < 0 else i
  return ("..." if start > 0 else "") + line[start:end] + ("..." if end < len(line) else "")


def peer_gone_detail(lines) -> str | None:
  """What the last of `lines` (a process's stderr) that shows a lost peer says (see _PEER_GONE), None if none."""
  lines = list(lines)
  text = "".join(lines)
  at = text.rfind("tasks are unhealthy")
  if at >= 0:  # then one line per silent task: `1`, `0, 1` or `/job:jax_worker/replica:0/task:1`
    ids = []
    for task in text[at:].split("\n")[1:]:
      found = re.fullmatch(r"\s*(?:/job:\S*task:)?(\d[\d, ]*)\s*", task)
      if not found:
        break
      ids += re.findall(r"\d+", found.group(1))
    if ids:
      return f"no heartbeat from process {', '.join(ids)}"
  for line in reversed(lines):
    for marker in _PEER_GONE:
      if marker in line:
        return excerpt(line, marker)
  return None


def user_error_line(lines) -> str | None:
  """The `error: ...` line a user error ends with (spade_jax.cli), if the last non-empty of `lines` is one."""
  last = next((line.strip() for line in reversed(list(lines)) if line.strip()), "")
  return last if last.startswith("error: ") else None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _copy(stream, out, prefix: bytes, lock, tail=None, held=None) -> None:
  """Copies a child's output line by line to `out` with `prefix`, keeping the last lines in `tail`. With `held` (a
  list), a line `error: ...` is written only once another line follows it: the last line of the stream, a user
  error's, is left in `held` for the launcher to show once for all processes. Writes that fail (a terminal that is
  gone) do not stop the copying: a child whose pipe is full would block."""

  def write(line):
    with lock:
      try:
        out.write(prefix + line)
        out.flush()
      except (OSError, ValueError):
        pass

  for line in stream:
    if tail is not None:
      tail.append(line.decode(errors="replace"))
    if held:
      write(held.pop())
    if held is not None and line.startswith(b"error: "):
      held.append(line)
    else:
      write(line)


def _describe(rc: int) -> str:
  return f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"


def _parse(argv):
  p = ArgumentParser(prog="python -m spade_jax.launch", description=__doc__.split("\n\n")[0],
              usage="%(prog)s [options] -- train.py --config=... --workdir=...")
  p.add_argument("--processes", type=int, default=2, help="processes (simulated hosts)")
  p.add_argument("--devices_per_process", type=int, default=1, help="CPU devices of each process")
  p.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  p.add_argument("--heartbeat_timeout", type=int, default=None,
                 help=f"seconds after which a silent process counts as dead (default: ${HEARTBEAT_ENV} or 100)")
  p.add_argument("--grace", type=float, default=None,
                 help="seconds the processes get to stop by themselves once one failed, or after Ctrl-C / SIGTERM / "
                      "SIGHUP, before they are killed (default: heartbeat timeout + 30)")
  p.add_argument("command", nargs=argparse.REMAINDER, help="the command each process runs (a .py file: with python)")
  args = p.parse_args(argv)
  cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not cmd:
    raise UserError("no command: put it after --, e.g. -- train.py --config=configs/demo.py --workdir=runs/mh")
  for name, value, what in (("processes", args.processes, "processes to start"),
                            ("devices_per_process", args.devices_per_process, "CPU devices for each process")):
    if value < 1:
      raise UserError(f"--{name}={value}: give 1 or more {what}")
  if not 0 <= args.port <= 65535:
    raise UserError(f"--port={args.port}: give a TCP port (1 to 65535), or 0 for a free one")
  if args.heartbeat_timeout is not None and args.heartbeat_timeout < 1:
    raise UserError(f"--heartbeat_timeout={args.heartbeat_timeout}: give a number of seconds, 1 or more")
  if args.grace is not None and not args.grace >= 0:
    raise UserError(f"--grace={args.grace:g}: give a number of seconds, 0 or more")
  env_heartbeat = os.environ.get(HEARTBEAT_ENV)
  if args.heartbeat_timeout is None and env_heartbeat and not (env_heartbeat.isdigit() and int(env_heartbeat) > 0):
    raise UserError(f"{HEARTBEAT_ENV}={env_heartbeat!r}: give a number of seconds, 1 or more (or unset it)")
  if cmd[0].endswith(".py"):
    if not os.path.isfile(cmd[0]):
      raise UserError(f"{cmd[0]}: no such script (the command after -- runs in every process; give its path, "
                      f"absolute or relative to {os.getcwd()})")
    cmd = [sys.executable, *cmd]
  elif shutil.which(cmd[0]) is None:
    raise UserError(f"{cmd[0]}: no such program (the command after -- runs in every process: a .py script or a "
                    "program on PATH)")
  return args, cmd


def main(argv=None) -> int:
  """The launcher; returns its exit status: 0, the first failed process's (128 + N: killed by signal N), or 2
  (EXIT_USER_ERROR) for a user's mistake, in the launcher's arguments or in every process."""
  try:
    args, cmd = _parse(argv)
  except UserError as e:
    _log("error: " + " ".join(str(e).split()))
    return EXIT_USER_ERROR
  n = args.processes
  heartbeat = args.heartbeat_timeout or int(os.environ.get(HEARTBEAT_ENV) or 100)
  grace = args.grace if args.grace is not None else heartbeat + 30
  port = args.port or _free_port()
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
  base = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(args.devices_per_process),
              JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags,
              **{HEARTBEAT_ENV: str(heartbeat)})
  # Handled from the start (a signal during the start-up is acted on as soon as the processes are there): the
  # handler only queues the signal, the loop below forwards it.
  signals = collections.deque()
  for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, lambda signum, frame: signals.append(signum))
  _log(f"[launch] {n} processes x {args.devices_per_process} CPU devices, coordinator 127.0.0.1:{port}, heartbeat "
       f"timeout {heartbeat}s: {' '.join(cmd)}")
  procs, threads, held, lock = [], [], [], threading.Lock()

  def kill_all():
    for proc in procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass

  for i in range(n):
    env = dict(base)
    if n > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i),
                 # jax 0.12.1: process 0 loading executables that an earlier run cached while the others compile
                 # their own hung the first step's collectives (README "Multi-host training")
                 JAX_ENABLE_COMPILATION_CACHE="false")
    try:  # from this (the main) thread: the processes die with the launcher, SIGKILL included (die_with_parent)
      proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                              preexec_fn=die_with_parent())
    except OSError as e:
      kill_all()
      _log(f"error: {cmd[0]}: cannot run it ({e.strerror or e}); the command after -- runs in every process")
      return EXIT_USER_ERROR
    procs.append(proc)
    held.append([])
    for stream, out, h in ((proc.stdout, sys.stdout.buffer, None), (proc.stderr, sys.stderr.buffer, held[i])):
      t = threading.Thread(target=_copy, args=(stream, out, f"[p{i}] ".encode(), lock, None, h), daemon=True)
      t.start()
      threads.append(t)
    _log(f"[launch] process {i}: pid {proc.pid}")

  failed, deadline, reported, asked = None, None, set(), False
  while any(proc.poll() is None for proc in procs):
    while signals:
      signum = signals.popleft()
      name = signal.Signals(signum).name
      if not asked:
        asked = True
        _log(f"[launch] {name}: asking every process to checkpoint and stop; those still running in {grace:.0f}s are "
             "killed (Ctrl-C again: now)")
        for proc in procs:
          if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.time() + grace if deadline is None else min(deadline, time.time() + grace)
      elif signum != signal.SIGHUP:  # a closing terminal may send SIGHUP twice (the kernel, then the shell)
        _log(f"[launch] {name} again: killing every process")
        kill_all()
    for i, proc in enumerate(procs):
      rc = proc.poll()
      if rc is None or i in reported:
        continue
      reported.add(i)
      _log(f"[launch] process {i} finished: {_describe(rc)}")
      if rc != 0 and failed is None:
        failed = rc
        if deadline is None:
          deadline = time.time() + grace
        _log(f"[launch] process {i} failed; the others get {deadline - time.time():.0f}s to stop by themselves, then "
             "are killed")
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
  # A last `error: ...` line: a user error's (exit status 2) once, unprefixed and last; any other as it came.
  errors = []
  for i, proc in enumerate(procs):
    for line in list(held[i]):
      if proc.returncode == EXIT_USER_ERROR:
        errors += [line] if line not in errors else []
      else:
        _copy([line], sys.stderr.buffer, f"[p{i}] ".encode(), lock)
  for line in errors:
    _copy([line], sys.stderr.buffer, b"", lock)
  if errors:
    return EXIT_USER_ERROR
  if failed is None:
    return 0
  return failed if failed > 0 else 128 - failed


if __name__ == "__main__":
  sys.exit(main())
