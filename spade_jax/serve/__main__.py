"""python -m spade_jax.serve --checkpoint=DIR [--host=127.0.0.1] [--port=8000] [--max_upload_mb=8] [--batch_size=4]
[--step=N] [--threads=16] [--queue_size=64] [--backlog=128] [--max_inflight_mb=32] [--request_timeout_s=30]: the
painter web app for a checkpoint (a workdir, its checkpoints/ folder or checkpoints/<step>).

A mistake in a flag or the checkpoint ends it with one `error: ...` line and exit status 2 (spade_jax.cli)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from spade_jax import cli
from spade_jax.errors import ArgumentParser, UserError

log = logging.getLogger("spade_jax.serve")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The flags, checked: a bad value raises UserError naming it (before the checkpoint is loaded)."""
  from spade_jax.serve.server import check_limits
  p = ArgumentParser(prog="python -m spade_jax.serve",
              description="GauGAN in the browser: paint a label map, see the synthesis.")
  p.add_argument("--checkpoint", required=True, help="a workdir, its checkpoints/ folder, or checkpoints/<step>")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
  p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
  p.add_argument("--max_upload_mb", type=float, default=8.0, help="largest request body accepted, in MB (else 413)")
  p.add_argument("--batch_size", type=int, default=4, help="synthesis requests run together in one generator call")
  p.add_argument("--batch_window_ms", type=float, default=5.0, help="how long a batch waits for more requests")
  g = p.add_argument_group("limits under load")
  g.add_argument("--threads", type=int, default=16,
                 help="request handler threads (a fixed pool; an open keep-alive connection holds one)")
  g.add_argument("--queue_size", type=int, default=64,
                 help="connections waiting for a thread; more are answered 503 with Retry-After at once")
  g.add_argument("--backlog", type=int, default=128, help="the listen backlog (connections not yet accepted)")
  g.add_argument("--max_inflight_mb", type=float, default=32.0,
                 help="request bodies in memory at once, in MB, all requests together; a request that would pass "
                      "it waits, then gets 503 (>= --max_upload_mb)")
  g.add_argument("--request_timeout_s", type=float, default=30.0,
                 help="a client that sends nothing this long mid-request gets 408 and is disconnected")
  a = p.parse_args(argv)
  if a.step is not None and a.step < 0:
    raise UserError(f"--step={a.step} must be >= 0 (a checkpoint step; leave it out for the latest)")
  if not 0 <= a.port <= 65535:
    raise UserError(f"--port={a.port} must be in [0, 65535] (0 picks any free port)")
  check_limits(max_upload_mb=a.max_upload_mb, batch_size=a.batch_size, batch_window_ms=a.batch_window_ms,
               threads=a.threads, queue_size=a.queue_size, backlog=a.backlog, max_inflight_mb=a.max_inflight_mb,
               request_timeout_s=a.request_timeout_s)
  return a


def main(argv: Sequence[str] | None = None) -> None:
  with cli.user_errors():
    _main(argv)


def _main(argv: Sequence[str] | None) -> None:
  a = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  if not cli.verbose():  # Orbax and JAX log every restore step and backend probe at INFO
    for handler in logging.getLogger().handlers:
      handler.addFilter(cli.QuietLibraries())
  import spade_jax
  from spade_jax.serve.server import PainterServer
  try:
    model = spade_jax.load(a.checkpoint, a.step)
  except UserError:
    raise
  except ValueError as e:  # a checkpoint that is not a painter's (no generator, a config it cannot use)
    raise UserError(f"cannot serve --checkpoint={a.checkpoint}: {e}") from e
  try:
    server = PainterServer(model, a.host, a.port, max_upload_mb=a.max_upload_mb, batch_size=a.batch_size,
                           batch_window_ms=a.batch_window_ms, threads=a.threads, queue_size=a.queue_size,
                           backlog=a.backlog, max_inflight_mb=a.max_inflight_mb,
                           request_timeout_s=a.request_timeout_s)
  except OSError as e:
    raise UserError(f"cannot listen on --host={a.host} --port={a.port}: {e.strerror or e}; give an address of this "
                    "machine as --host, and a free --port (--port=0 takes any free one)") from e
  t = time.perf_counter()
  log.info("loaded %r; compiling for batch %d ...", model, a.batch_size)
  server.warm_up()
  log.info("ready in %.1f s (up to %d request threads, %d waiting, %g MB of uploads in flight)",
           time.perf_counter() - t, a.threads, a.queue_size, a.max_inflight_mb)
  print(f"painter for {model!r} at {server.url}  (Ctrl-C stops it)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.close()


if __name__ == "__main__":
  sys.exit(main())
