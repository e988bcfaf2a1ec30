"""python -m spade_jax.serve --checkpoint=DIR [--host=127.0.0.1] [--port=8000] [--max_upload_mb=8] [--batch_size=4]
[--step=N]: the painter web app for a checkpoint (a workdir, its checkpoints/ folder or checkpoints/<step>)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

log = logging.getLogger("spade_jax.serve")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m spade_jax.serve",
                              description="GauGAN in the browser: paint a label map, see the synthesis.")
  p.add_argument("--checkpoint", required=True, help="a workdir, its checkpoints/ folder, or checkpoints/<step>")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
  p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
  p.add_argument("--max_upload_mb", type=float, default=8.0, help="largest request body accepted, in MB")
  p.add_argument("--batch_size", type=int, default=4, help="synthesis requests run together in one generator call")
  p.add_argument("--batch_window_ms", type=float, default=5.0, help="how long a batch waits for more requests")
  a = p.parse_args(argv)
  if a.batch_size < 1:
    p.error(f"--batch_size must be >= 1, got {a.batch_size}")
  if a.max_upload_mb <= 0:
    p.error(f"--max_upload_mb must be > 0, got {a.max_upload_mb}")
  if not 0 <= a.port <= 65535:
    p.error(f"--port must be in [0, 65535], got {a.port}")
  return a


def main(argv: Sequence[str] | None = None) -> None:
  a = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  import spade_jax
  from spade_jax.serve.server import PainterServer
  try:
    model = spade_jax.load(a.checkpoint, a.step)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  try:
    server = PainterServer(model, a.host, a.port, max_upload_mb=a.max_upload_mb, batch_size=a.batch_size,
                           batch_window_ms=a.batch_window_ms)
  except OSError as e:
    raise SystemExit(f"error: cannot listen on {a.host}:{a.port}: {e}") from None
  t = time.perf_counter()
  log.info("loaded %r; compiling for batch %d ...", model, a.batch_size)
  server.warm_up()
  log.info("ready in %.1f s", time.perf_counter() - t)
  print(f"painter for {model!r} at {server.url}  (Ctrl-C stops it)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.close()


if __name__ == "__main__":
  sys.exit(main())
