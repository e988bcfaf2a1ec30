"""The painter's HTTP server: a static page plus a JSON API over a `spade_jax.Synthesizer`, stdlib only.

Endpoints (JSON in and out; images travel as base64 PNG, a `data:` URL prefix is accepted):
  GET  /api/info        image size, classes (names, colours), use_vae, has_encoder, step, source, limits, the default
                        label map
  POST /api/labels      {"image"}                       -> {"ids", "dtype", "width", "height", ...}: an uploaded label
                        map (index or colour-coded PNG) validated and resized to the model's size, for the canvas
  POST /api/synthesize  {"labels", "seed", "style_id"?} -> {"image", ...}
  POST /api/style       {"image"}                       -> {"style_id"}: the encoder's z, kept in a small LRU

Synthesis goes through one worker thread (`Batcher`): requests arriving while the generator is busy (or within a
few milliseconds of each other) run as one call, padded to the fixed batch size, so the jitted generator compiles
exactly once per resolution, at start-up (`warm_up`). Bad input is answered with HTTP 4xx and {"error": message}.

Overload and slow clients are bounded (see `PainterServer`): a fixed pool of `threads` handler threads, at most
`queue_size` connections waiting for one (more are answered 503 with Retry-After at once), a listen backlog of
`backlog`, at most `max_inflight_mb` of request bodies in memory at once (a request that would pass it waits, then
gets 503), and a client that stops sending mid-request for `request_timeout_s` gets 408 and its thread back.
"""
from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import http.server
import io
import ipaddress
import json
import logging
import math
import pathlib
import queue
import selectors
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from spade_jax.errors import UserError

log = logging.getLogger("spade_jax.serve")

MAX_SIDE = 4096             # px; larger uploads are refused before their pixels are decoded
ASPECT_TOLERANCE = 0.02     # a label map's width / height may differ this much (relative) from the model's
MAX_SEED = 2**31 - 1
RETRY_AFTER_S = 2           # the Retry-After of a 503 (busy) answer
LINGER_S = 2.0              # a closed connection's input is drained this long at most (see _Closer)
LOG_EVERY_S = 10.0          # the busy (503) warnings are logged at most this often, with a count of the rest
STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/index.html": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/style.css": ("style.css", "text/css; charset=utf-8")}
_CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_SKY = ("sky", "sky-other")
_GROUND = ("grass", "terrain", "field", "sand", "sea", "water", "road", "ground-other")


class BadRequest(Exception):
  """A request the client must fix (or retry, for 503): answered with `status`, {"error": message} and `headers`."""

  def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.message, self.status, self.headers = message, status, headers or {}


def check_limits(*, max_upload_mb: float = 8.0, batch_size: int = 4, batch_window_ms: float = 5.0,
                 threads: int = 16, queue_size: int = 64, backlog: int = 128, max_inflight_mb: float = 32.0,
                 request_timeout_s: float = 30.0, keepalive_s: float = 5.0, budget_wait_s: float = 10.0) -> None:
  """Raises UserError naming every bad limit (by its command-line flag) with its value and what it may be."""
  def whole(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

  def real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

  bad = []
  if not (real(max_upload_mb) and max_upload_mb > 0):
    bad.append(f"--max_upload_mb={max_upload_mb!r} must be a number > 0 (the largest request body, in MB)")
  if not (whole(batch_size) and batch_size >= 1):
    bad.append(f"--batch_size={batch_size!r} must be an integer >= 1")
  if not (real(batch_window_ms) and batch_window_ms >= 0):
    bad.append(f"--batch_window_ms={batch_window_ms!r} must be a number >= 0")
  if not (whole(threads) and 1 <= threads <= 1024):
    bad.append(f"--threads={threads!r} must be an integer in [1, 1024] (request handler threads)")
  if not (whole(queue_size) and 0 <= queue_size <= 65536):
    bad.append(f"--queue_size={queue_size!r} must be an integer in [0, 65536] (connections waiting for a thread)")
  if not (whole(backlog) and 1 <= backlog <= 65535):
    bad.append(f"--backlog={backlog!r} must be an integer in [1, 65535] (the listen backlog)")
  if not (real(max_inflight_mb) and max_inflight_mb > 0):
    bad.append(f"--max_inflight_mb={max_inflight_mb!r} must be a number > 0 (request bodies in memory at once, in MB)")
  elif real(max_upload_mb) and max_inflight_mb < max_upload_mb:
    bad.append(f"--max_inflight_mb={max_inflight_mb:g} is below --max_upload_mb={max_upload_mb:g}: a request of the "
               "largest accepted size could never be read; raise --max_inflight_mb or lower --max_upload_mb")
  for name, value in (("request_timeout_s", request_timeout_s), ("keepalive_s", keepalive_s)):
    if not (real(value) and value > 0):
      bad.append(f"--{name}={value!r} must be a number of seconds > 0")
  if not (real(budget_wait_s) and budget_wait_s >= 0):
    bad.append(f"budget_wait_s={budget_wait_s!r} must be a number of seconds >= 0")
  if bad:
    raise UserError(f"bad painter setting{'s' if len(bad) > 1 else ''}: {'; '.join(bad)}")


# -- helpers --------------------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
  """True when every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    pass
  try:
    infos = socket.getaddrinfo(host, None)
  except OSError:
    return False
  return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def default_label_map(names: list[str], size: tuple[int, int]) -> np.ndarray:
  """A starting canvas: sky over ground (60 / 40) when the classes have both, else all class 0."""
  h, w = size
  lower = [n.lower() for n in names]
  sky = next((lower.index(n) for n in _SKY if n in lower), None)
  ground = next((lower.index(n) for n in _GROUND if n in lower), None)
  ids = np.zeros((h, w), np.int32)
  if sky is not None and ground is not None:
    ids[:] = sky
    ids[int(round(h * 0.6)):] = ground
  return ids


def _b64_field(body: dict, key: str, what: str) -> bytes:
  value = body.get(key)
  if value is None:
    raise BadRequest(f"missing {key!r}: the {what} as a base64 image file")
  if not isinstance(value, str):
    raise BadRequest(f"{key!r} must be a base64 string (the {what}), got {type(value).__name__}")
  if value.startswith("data:"):
    value = value.partition(",")[2]
  try:
    raw = base64.b64decode(value, validate=True)
  except (binascii.Error, ValueError) as e:
    raise BadRequest(f"{what}: {key!r} is not valid base64 ({e})") from None
  if not raw:
    raise BadRequest(f"{what}: {key!r} is empty")
  return raw


def decode_image(raw: bytes, what: str) -> Image.Image:
  """Bytes -> a loaded PIL image; 400 when PIL cannot decode them or a side is above MAX_SIDE."""
  try:
    im = Image.open(io.BytesIO(raw))
  except Image.DecompressionBombError as e:
    raise BadRequest(f"{what} is too large to decode ({e})") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise BadRequest(f"{what} is not an image that PIL can decode ({len(raw)} bytes: {e})") from None
  w, h = im.size
  if max(w, h) > MAX_SIDE:
    raise BadRequest(f"{what} is {w}x{h} px; images with a side above {MAX_SIDE} px are refused")
  try:
    im.load()
  except (OSError, ValueError, SyntaxError) as e:
    raise BadRequest(f"{what} is not an image that PIL can decode (a {im.format} file of {w}x{h} px, but: {e})") \
        from None
  return im


def check_label_size(size: tuple[int, int], model_size: tuple[int, int]) -> bool:
  """Accepts the model's aspect ratio within ASPECT_TOLERANCE (resized with NEAREST later); -> whether it resizes."""
  w, h = size
  mh, mw = model_size
  if (w, h) == (mw, mh):
    return False
  if w < 1 or h < 1 or abs((w / h) / (mw / mh) - 1) > ASPECT_TOLERANCE:
    raise BadRequest(f"label map is {w}x{h} px (aspect ratio {w / max(h, 1):.3f}) but the model makes {mw}x{mh} "
                     f"images (aspect ratio {mw / mh:.3f}): a label map must have the model's aspect ratio within "
                     f"{ASPECT_TOLERANCE:.0%} (it is then resized to {mw}x{mh} with NEAREST)")
  return True


def png_b64(image: np.ndarray) -> str:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "PNG", compress_level=1)
  return base64.b64encode(buf.getvalue()).decode("ascii")


# -- batching -------------------------------------------------------------------------------------------------------
class _Job:
  __slots__ = ("ids", "z", "done", "image", "error")

  def __init__(self, ids: np.ndarray, z: np.ndarray | None):
    self.ids, self.z = ids, z
    self.done = threading.Event()
    self.image: np.ndarray | None = None
    self.error: BaseException | None = None


class Batcher:
  """One worker thread runs the generator on batches of pending requests, padded to `batch_size`.

  The worker takes the first pending request, then whatever else arrives within `window_s` (or queued while the
  previous call ran), up to `batch_size`; the batch is padded with copies of its first map so the jitted generator
  always sees one shape. Stats (`calls`, `requests`, `fills`, `shapes`) tell tests and logs how well it batches.
  """

  def __init__(self, model, batch_size: int = 4, window_s: float = 0.005):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.model, self.batch_size, self.window_s = model, int(batch_size), float(window_s)
    self.calls = self.requests = 0
    self.fills: collections.Counter[int] = collections.Counter()   # requests per call -> number of calls
    self.shapes: set[tuple[int, ...]] = set()                       # label batch shapes given to the generator
    self._queue: queue.Queue[_Job | None] = queue.Queue()
    self._lock = threading.Lock()
    self._thread: threading.Thread | None = None

  def generate(self, ids: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    """One generator call on a full batch (B, H, W) of validated ids -> uint8 (B, H, W, 3)."""
    with self._lock:
      self.shapes.add(tuple(ids.shape))
    # Instance-edge models get the label map's class boundaries, as the Synthesizer does without instance maps;
    # passing them explicitly skips its warning, which is expected here.
    instances = None if self.model.no_instance else ids
    return self.model.synthesize(ids, instances=instances, z=z)

  def warm_up(self) -> None:
    """Compiles the generator for the one batch shape the worker uses."""
    h, w = self.model.image_size
    z = np.zeros((self.batch_size, self.model.generator.z_dim), np.float32) if self.model.use_vae else None
    self.generate(np.zeros((self.batch_size, h, w), np.int32), z)

  def start(self) -> None:
    if self._thread is None:
      self._thread = threading.Thread(target=self._loop, name="spade-batcher", daemon=True)
      self._thread.start()

  def close(self) -> None:
    if self._thread is not None:
      self._queue.put(None)
      self._thread.join(timeout=60)
      self._thread = None

  def submit(self, ids: np.ndarray, z: np.ndarray | None, timeout: float = 300.0) -> np.ndarray:
    """Queues one (H, W) id map (+ its z) and waits for its uint8 (H, W, 3) image."""
    if self._thread is None:
      raise BadRequest("the server is not running", 503)
    job = _Job(ids, z)
    self._queue.put(job)
    if not job.done.wait(timeout):
      raise BadRequest(f"synthesis did not finish within {timeout:.0f} s", 503)
    if job.error is not None:
      raise job.error
    return job.image

  def _loop(self) -> None:
    while True:
      job = self._queue.get()
      if job is None:
        return
      jobs, stop = [job], False
      deadline = time.monotonic() + self.window_s
      while len(jobs) < self.batch_size:
        left = deadline - time.monotonic()
        try:  # past the window, still take what queued up while the last call ran
          nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
        except queue.Empty:
          break
        if nxt is None:
          stop = True
          break
        jobs.append(nxt)
      self._run(jobs)
      if stop:
        return

  def _run(self, jobs: list[_Job]) -> None:
    pad = [jobs[0]] * (self.batch_size - len(jobs))
    try:
      ids = np.stack([j.ids for j in jobs + pad])
      z = np.stack([j.z for j in jobs + pad]) if self.model.use_vae else None
      images = self.generate(ids, z)
      for j, image in zip(jobs, images):
        j.image = image
    except Exception as e:
      log.exception("synthesis failed")
      for j in jobs:
        j.error = e
    finally:
      with self._lock:
        self.calls += 1
        self.requests += len(jobs)
        self.fills[len(jobs)] += 1
      for j in jobs:
        j.done.set()


# -- the app --------------------------------------------------------------------------------------------------------
class PainterServer:
  """The painter for one Synthesizer: `PainterServer(model, port=0).start()` in tests, `serve_forever()` in the CLI.

  host/port: where to listen (port 0 picks a free one: `url`). max_upload_mb: the largest request body accepted
  (larger ones get 413 before the body is read). batch_size / batch_window_ms: the batching of synthesis requests.
  style_cache: how many encoded styles are kept (least recently used dropped first).

  Limits under load (each also a flag of `python -m spade_jax.serve`):
    threads            request handler threads, a fixed pool; a keep-alive connection holds one while it is open
    queue_size         accepted connections waiting for a thread; one more is answered 503 + Retry-After at once
    backlog            the listen(2) backlog: connections the kernel holds until they are accepted
    max_inflight_mb    request bodies in memory at once, all requests together; a request that would pass it waits
                       up to `budget_wait_s` for others to finish, then gets 503 + Retry-After (unread)
    request_timeout_s  the longest a client may stop sending mid-request (request line, headers or body) or stop
                       reading the response: then 408 (when still possible) and the connection is closed
    keepalive_s        how long a connection with no byte of a (next) request keeps its thread: then it is closed
                       quietly (a keep-alive connection that goes idle, a browser's speculative pre-connection)
  """

  def __init__(self, model, host: str = "127.0.0.1", port: int = 8000, *, max_upload_mb: float = 8.0,
               batch_size: int = 4, batch_window_ms: float = 5.0, style_cache: int = 32, threads: int = 16,
               queue_size: int = 64, backlog: int = 128, max_inflight_mb: float = 32.0,
               request_timeout_s: float = 30.0, keepalive_s: float = 5.0, budget_wait_s: float = 10.0):
    check_limits(max_upload_mb=max_upload_mb, batch_size=batch_size, batch_window_ms=batch_window_ms,
                 threads=threads, queue_size=queue_size, backlog=backlog, max_inflight_mb=max_inflight_mb,
                 request_timeout_s=request_timeout_s, keepalive_s=keepalive_s, budget_wait_s=budget_wait_s)
    self.model = model
    self.max_upload_mb = float(max_upload_mb)
    self.max_upload_bytes = int(max_upload_mb * 2**20)
    self.max_inflight_mb = float(max_inflight_mb)
    self.inflight = ByteBudget(int(max_inflight_mb * 2**20))  # request bodies being read or processed
    self.budget_wait_s = float(budget_wait_s)
    self.batcher = Batcher(model, batch_size, batch_window_ms / 1000.0)
    self.class_names = list(model.class_names)  # the data set's, or the demo's landscape classes
    self.ids_dtype = np.dtype("<u1") if model.num_classes <= 255 else np.dtype("<u2")
    self.default_labels = default_label_map(self.class_names, model.image_size)
    self._styles: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._styles_lock = threading.Lock()
    self._style_cache = int(style_cache)
    self._latents: dict[int, np.ndarray] = {}
    self.throttled = _Throttled()
    if not is_loopback(host):
      log.warning("listening on %s, which is not a loopback address: anyone who can reach this machine can use the "
                  "painter (and its CPU/GPU time); the default --host=127.0.0.1 keeps it local", host)
    server_cls = _HTTPServer6 if ":" in host else _HTTPServer
    self.httpd = server_cls((host.strip("[]"), port), _Handler, threads=threads, queue_size=queue_size,
                            backlog=backlog, request_timeout_s=request_timeout_s, keepalive_s=keepalive_s,
                            throttled=self.throttled)
    self.httpd.app = self
    self._thread: threading.Thread | None = None

  @property
  def url(self) -> str:
    host, port = self.httpd.server_address[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"

  def warm_up(self) -> None:
    """Compiles everything a request can run (generator at the batch size, encoder, latent sampling)."""
    self.batcher.warm_up()
    if self.model.use_vae:
      self._latent(0)
    if self.model.has_encoder:
      h, w = self.model.image_size
      self.model.encode_style(np.zeros((h, w, 3), np.uint8))

  def start(self) -> PainterServer:
    """Serves in a background thread (returns at once, its threads all started)."""
    self.batcher.start()
    self.httpd.start_workers()
    self._thread = threading.Thread(target=self.httpd.serve_forever, name="spade-painter", daemon=True)
    self._thread.start()
    return self

  def serve_forever(self) -> None:
    self.batcher.start()
    self.httpd.serve_forever()

  def close(self) -> None:
    if self._thread is not None:
      self.httpd.shutdown()
      self._thread.join(timeout=30)
      self._thread = None
    self.httpd.server_close()
    self.batcher.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- API ------------------------------------------------------------------------------------------------------
  def routes(self) -> dict[str, Callable[[dict], dict]]:
    return {"/api/labels": self.api_labels, "/api/synthesize": self.api_synthesize, "/api/style": self.api_style}

  def info(self) -> dict[str, Any]:
    m = self.model
    h, w = m.image_size
    if not m.use_vae:
      note = "This model has no VAE: its output depends on the label map alone."
    elif not m.has_encoder:
      note = "This checkpoint has no encoder, so style images cannot be used; Re-roll draws a new random style."
    else:
      note = "Upload a photo to copy its style, or re-roll a random one."
    return {
        "image_size": [h, w], "width": w, "height": h,
        "classes": [{"id": i, "name": n, "color": "#" + "".join(f"{int(v):02x}" for v in m.palette[i])}
                    for i, n in enumerate(self.class_names)],
        "use_vae": m.use_vae, "has_encoder": m.has_encoder, "instance_edges": not m.no_instance,
        "step": m.step, "source": m.source, "weights": getattr(m, "weights", "live"), "model": repr(m),
        "style_note": note, "batch_size": self.batcher.batch_size, "max_upload_mb": self.max_upload_mb,
        "max_side": MAX_SIDE, "aspect_tolerance": ASPECT_TOLERANCE, "max_seed": MAX_SEED,
        "threads": self.httpd.threads, "queue_size": self.httpd.queue_size, "max_inflight_mb": self.max_inflight_mb,
        "request_timeout_s": self.httpd.request_timeout_s,
        "default_labels": self._ids_json(self.default_labels),
    }

  def _ids_json(self, ids: np.ndarray) -> dict:
    return {"ids": base64.b64encode(ids.astype(self.ids_dtype).tobytes()).decode("ascii"),
            "dtype": "uint8" if self.ids_dtype.itemsize == 1 else "uint16",
            "height": int(ids.shape[0]), "width": int(ids.shape[1])}

  def decode_labels(self, body: dict, key: str) -> tuple[np.ndarray, dict]:
    """A base64 label map -> validated int32 (H, W) ids at the model's size, and what was done to it."""
    im = decode_image(_b64_field(body, key, "label map"), "label map")
    resized = check_label_size(im.size, self.model.image_size)
    try:
      ids = self.model.prepare_labels(im)[0]
    except ValueError as e:
      raise BadRequest(f"label map: {e}".replace(" in labels[0]", "")) from None
    return ids, {"source_size": list(im.size), "mode": im.mode, "resized": resized,
                 "colour_coded": im.mode in ("RGB", "RGBA")}

  def api_labels(self, body: dict) -> dict:
    ids, meta = self.decode_labels(body, "image")
    return {**self._ids_json(ids), **meta}

  def _latent(self, seed: int) -> np.ndarray:
    z = self._latents.get(seed)
    if z is None:
      z = self.model.latents(1, seed=seed)[0]
      if len(self._latents) > 1024:
        self._latents.clear()
      self._latents[seed] = z
    return z

  def _style_checks(self) -> None:
    if not self.model.use_vae:
      raise BadRequest("this model was trained without the VAE encoder (use_vae=False): it takes no style; its "
                       "output is determined by the label map alone")

  def api_synthesize(self, body: dict) -> dict:
    t0 = time.perf_counter()
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
      raise BadRequest(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    style_id = body.get("style_id")
    if style_id is not None:
      self._style_checks()
      with self._styles_lock:
        z = self._styles.get(style_id) if isinstance(style_id, str) else None
        if z is None:
          raise BadRequest(f"unknown style_id {style_id!r}: the server keeps the last {self._style_cache} styles "
                           "(and none across restarts); upload the style image again")
        self._styles.move_to_end(style_id)
    else:
      z = self._latent(seed) if self.model.use_vae else None
    ids, meta = self.decode_labels(body, "labels")
    image = self.batcher.submit(ids, z)
    return {"image": png_b64(image), "seed": seed, "style_id": style_id, "resized": meta["resized"],
            "ms": round((time.perf_counter() - t0) * 1000, 1)}

  def api_style(self, body: dict) -> dict:
    self._style_checks()
    if not self.model.has_encoder:
      raise BadRequest("this checkpoint has no encoder ('e'), so style images cannot be encoded; re-roll a random "
                       "style instead (or convert the model with --encoder=latest_net_E.pth)")
    raw = _b64_field(body, "image", "style image")
    im = decode_image(raw, "style image")
    try:
      mu, _ = self.model.encode_style(im)
    except ValueError as e:
      raise BadRequest(f"style image: {e}") from None
    style_id = hashlib.sha256(raw).hexdigest()[:16]
    with self._styles_lock:
      self._styles[style_id] = mu[0].astype(np.float32)
      self._styles.move_to_end(style_id)
      while len(self._styles) > self._style_cache:
        self._styles.popitem(last=False)
    return {"style_id": style_id, "source_size": list(im.size)}


# -- limits ------------------------------------------------------------------------------------------------------
class ByteBudget:
  """A byte count shared by concurrent requests: `acquire(n, timeout)` waits until n more bytes fit under `limit`
  (False after `timeout` s), `release(n)` gives them back. `used` and `peak` tell tests and logs how full it got."""

  def __init__(self, limit: int):
    self.limit, self.used, self.peak = int(limit), 0, 0
    self._cond = threading.Condition()

  def acquire(self, n: int, timeout: float) -> bool:
    if n > self.limit:
      return False
    deadline = time.monotonic() + timeout
    with self._cond:
      while self.used + n > self.limit:
        left = deadline - time.monotonic()
        if left <= 0:
          return False
        self._cond.wait(left)
      self.used += n
      self.peak = max(self.peak, self.used)
      return True

  def release(self, n: int) -> None:
    if n:
      with self._cond:
        self.used -= n
        self._cond.notify_all()


class _Throttled:
  """log.warning at most once per `every_s` for each kind of line; the lines left out are counted into the next."""

  def __init__(self, every_s: float = LOG_EVERY_S):
    self.every_s = every_s
    self.counts: collections.Counter[str] = collections.Counter()  # every occurrence, logged or not
    self._last: dict[str, float] = {}
    self._skipped: collections.Counter[str] = collections.Counter()
    self._lock = threading.Lock()

  def warning(self, kind: str, msg: str, *args) -> None:
    now = time.monotonic()
    with self._lock:
      self.counts[kind] += 1
      if now - self._last.get(kind, -math.inf) < self.every_s:
        self._skipped[kind] += 1
        return
      self._last[kind] = now
      skipped = self._skipped.pop(kind, 0)
    if skipped:
      msg += f" (and {skipped} more like it in the last {self.every_s:.0f} s)"
    log.warning(msg, *args)


def _raw_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
  """A complete `Connection: close` JSON error response, for the places that answer without a request handler."""
  body = json.dumps({"error": message}).encode()
  lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
           "Cache-Control: no-store", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
  return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Closer:
  """Closes finished connections without resetting them, in one thread of its own.

  Closing a socket with unread input (a body refused with 413 or 503 before it was read, a client still sending
  after its 408) makes the kernel answer with a reset, which can destroy the response before the client has read
  it. So a connection is shut down for writing (its response is complete; FIN follows it), then what the client
  still sends is read and dropped until it closes its side or `linger_s` passes, and only then closed. At most
  `max_sockets` wait at once; more are closed at once.
  """

  def __init__(self, linger_s: float = LINGER_S, max_sockets: int = 256):
    self.linger_s, self.max_sockets = linger_s, max_sockets
    self._lock = threading.Lock()
    self._incoming: list[socket.socket] = []
    self._held = 0
    self._stopping = False
    self._thread: threading.Thread | None = None
    self._wake_r = self._wake_w = None

  def start(self) -> None:
    with self._lock:
      if self._thread is not None or self._stopping:
        return
      self._wake_r, self._wake_w = socket.socketpair()
      self._wake_r.setblocking(False)
      self._wake_w.setblocking(False)
      self._thread = threading.Thread(target=self._loop, name="spade-http-closer", daemon=True)
    self._thread.start()

  def close(self, sock: socket.socket) -> None:
    try:
      sock.shutdown(socket.SHUT_WR)
    except OSError:  # not connected (any more)
      sock.close()
      return
    with self._lock:
      keep = self._thread is not None and not self._stopping and self._held < self.max_sockets
      if keep:
        self._incoming.append(sock)
        self._held += 1
    if not keep:
      sock.close()
      return
    self._wake()

  def stop(self) -> None:
    with self._lock:
      self._stopping = True
      thread = self._thread
    if thread is not None:
      self._wake()
      thread.join(timeout=10)
      self._wake_r.close()
      self._wake_w.close()

  def _wake(self) -> None:
    try:
      self._wake_w.send(b"x")
    except OSError:  # its buffer is full: the loop is awake anyway
      pass

  def _loop(self) -> None:
    sel = selectors.DefaultSelector()
    sel.register(self._wake_r, selectors.EVENT_READ)
    deadlines: dict[socket.socket, float] = {}
    buf = bytearray(65536)

    def drop(s):
      sel.unregister(s)
      del deadlines[s]
      s.close()
      with self._lock:
        self._held -= 1

    while True:
      timeout = max(0.0, min(deadlines.values()) - time.monotonic()) if deadlines else None
      for key, _ in sel.select(timeout):
        s = key.fileobj
        if s is self._wake_r:
          try:
            while self._wake_r.recv(4096):
              pass
          except OSError:
            pass
          with self._lock:
            new, self._incoming, stopping = self._incoming, [], self._stopping
          for n in new:
            n.setblocking(False)
            sel.register(n, selectors.EVENT_READ)
            deadlines[n] = time.monotonic() + self.linger_s
          if stopping:
            for n in list(deadlines):
              drop(n)
            sel.close()
            return
          continue
        try:
          gone = s.recv_into(buf) == 0  # what the client still sends is dropped
        except BlockingIOError:
          gone = False
        except OSError:
          gone = True
        if gone:
          drop(s)
      now = time.monotonic()
      for s in [s for s, d in deadlines.items() if d <= now]:
        drop(s)


# -- HTTP -----------------------------------------------------------------------------------------------------------
class _HTTPServer(http.server.HTTPServer):
  """An HTTPServer whose requests run on a fixed pool of `threads` worker threads.

  The accept loop (`serve_forever`) queues each connection for the workers; at most `queue_size` wait. One more is
  answered 503 with Retry-After by the accept loop itself, at once, without reading it; `backlog` is the listen
  backlog. Finished connections go to a `_Closer`. `busy`, `peak_busy` and `stats` tell tests and logs how loaded
  it is ("handled", "rejected": 503 for want of a thread, "over_budget": 503 for want of --max_inflight_mb,
  "timeouts": 408 or a client not reading its response).
  """

  app: PainterServer

  def __init__(self, address, handler, *, threads: int = 16, queue_size: int = 64, backlog: int = 128,
               request_timeout_s: float = 30.0, keepalive_s: float = 5.0, throttled: _Throttled | None = None):
    self.threads, self.queue_size = int(threads), int(queue_size)
    self.request_queue_size = int(backlog)  # read by server_activate: listen(backlog)
    self.request_timeout_s, self.keepalive_s = float(request_timeout_s), float(keepalive_s)
    self.throttled = throttled or _Throttled()
    self.busy = self.peak_busy = 0
    self.stats: collections.Counter[str] = collections.Counter()
    self._pending: queue.SimpleQueue = queue.SimpleQueue()
    self._slots = threading.BoundedSemaphore(self.threads + self.queue_size)  # running + waiting connections
    self._workers: list[threading.Thread] = []
    self._active: set[socket.socket] = set()
    self._lock = threading.Lock()
    self._closing = False
    self._closer = _Closer()
    super().__init__(address, handler)

  @property
  def waiting(self) -> int:
    """Connections accepted and queued for a worker thread."""
    return self._pending.qsize()

  def count(self, key: str) -> None:
    with self._lock:
      self.stats[key] += 1

  def start_workers(self) -> None:
    with self._lock:
      if self._workers or self._closing:
        return
      self._workers = [threading.Thread(target=self._work, name=f"spade-http-{i}", daemon=True)
                       for i in range(self.threads)]
    self._closer.start()
    for t in self._workers:
      t.start()

  def serve_forever(self, poll_interval: float = 0.5) -> None:
    self.start_workers()
    super().serve_forever(poll_interval)

  def process_request(self, request, client_address) -> None:
    """In the accept loop: queue the connection for a worker, or answer 503 when the threads and queue are full."""
    if not self._workers:
      self.start_workers()
    if not self._slots.acquire(blocking=False):
      self._reject(request, client_address)
      return
    self._pending.put((request, client_address))

  def _reject(self, request, client_address) -> None:
    self.count("rejected")
    message = (f"the painter is busy: all {self.threads} request threads are in use and {self.queue_size} "
               "connections are waiting (--threads, --queue_size); try again in a moment")
    try:
      request.setblocking(False)  # a small response into an empty socket buffer: never blocks the accept loop
      request.send(_raw_response(503, "Service Unavailable", message, {"Retry-After": str(RETRY_AFTER_S)}))
    except OSError:
      pass
    self.shutdown_request(request)
    self.throttled.warning("busy", "busy: refused a connection from %s with 503: all %d threads are in use and %d "
                           "connections are waiting (--threads, --queue_size)", client_address[0], self.threads,
                           self.queue_size)

  def _work(self) -> None:
    while True:
      item = self._pending.get()
      if item is None:
        return
      request, client_address = item
      with self._lock:
        self._active.add(request)
        self.busy += 1
        self.peak_busy = max(self.peak_busy, self.busy)
      try:
        if not self._closing:
          self.finish_request(request, client_address)
      except Exception:  # noqa: BLE001  (handle_error tells a client's socket error from a bug)
        self.handle_error(request, client_address)
      finally:
        with self._lock:
          self._active.discard(request)
          self.busy -= 1
          self.stats["handled"] += 1
        self.shutdown_request(request)
        self._slots.release()

  def shutdown_request(self, request) -> None:
    self._closer.close(request)

  def handle_error(self, request, client_address) -> None:
    """A client's socket error (it went away, or stopped reading) is one line; anything else is a bug: traceback."""
    e = sys.exc_info()[1]
    if isinstance(e, OSError):
      log.warning("%s: connection error: %s", client_address[0], e)
    else:
      log.exception("request from %s failed", client_address[0])

  def server_close(self) -> None:
    """Closes the listening socket, the waiting connections, unblocks the busy workers and stops them."""
    super().server_close()
    with self._lock:
      self._closing = True
      active, self._active = list(self._active), set()
      workers, self._workers = self._workers, []
    while True:
      try:
        item = self._pending.get_nowait()
      except queue.Empty:
        break
      if item is not None:
        item[0].close()
    for s in active:
      try:
        s.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass
    for _ in workers:
      self._pending.put(None)
    deadline = time.monotonic() + 10  # a worker may be waiting for a synthesis to finish
    for t in workers:
      t.join(timeout=max(0.1, deadline - time.monotonic()))
    self._closer.stop()


class _HTTPServer6(_HTTPServer):
  address_family = socket.AF_INET6


class _Stalled(TimeoutError):
  """The client sent nothing for the server's request_timeout_s in the middle of a request."""


class _Input(io.RawIOBase):
  """A connection's input with two timeouts: `idle_s` while no byte of a request has come (a keep-alive
  connection waiting for its next request: closed quietly), `stall_s` once one has (a client that stops sending
  mid-request: _Stalled, answered 408). Writes to the socket keep `stall_s` as their timeout."""

  def __init__(self, sock: socket.socket, idle_s: float, stall_s: float):
    super().__init__()
    self.sock, self.idle_s, self.stall_s = sock, idle_s, stall_s
    self.started = False  # a byte of the current request has come (reset by the handler before each request)

  def readable(self) -> bool:
    return True

  def readinto(self, b) -> int:
    started = self.started
    self.sock.settimeout(self.stall_s if started else self.idle_s)
    try:
      n = self.sock.recv_into(b)
    except TimeoutError:
      if started:
        raise _Stalled(f"nothing received for {self.stall_s:g} s") from None
      raise
    finally:
      self.sock.settimeout(self.stall_s)
    if n:
      self.started = True
    return n


_CHUNK = 65536  # the input buffer, and the most one read of a body takes


class _Handler(http.server.BaseHTTPRequestHandler):
  server_version = "spade_jax-painter/1"
  protocol_version = "HTTP/1.1"
  server: _HTTPServer

  @property
  def app(self) -> PainterServer:
    return self.server.app

  def setup(self):
    super().setup()
    self.connection.settimeout(self.server.request_timeout_s)
    self.rfile.close()
    self._input = _Input(self.connection, self.server.keepalive_s, self.server.request_timeout_s)
    self.rfile = io.BufferedReader(self._input, _CHUNK)
    self._stage, self._responding = "request line", False

  def log_message(self, fmt, *args):
    log.debug("%s %s", self.address_string(), fmt % args)

  def handle_one_request(self):
    """BaseHTTPRequestHandler's, but a client that stalls mid-request gets 408 and one warning line, a client that
    goes away one line, an idle keep-alive connection is closed quietly: no traceback, no 500."""
    self._input.started, self._responding, self._stage = False, False, "request line"
    self.command, self.path, self.requestline = None, "", ""
    try:
      self.raw_requestline = self.rfile.readline(65537)
      if len(self.raw_requestline) > 65536:
        self.request_version = self.default_request_version
        self.send_error(414)
        self.close_connection = True
        return
      if not self.raw_requestline:
        self.close_connection = True
        return
      self._input.started = True  # (a pipelined request may already be in the buffer)
      self._stage = "request headers"
      if not self.parse_request():
        return
      self._stage = "request"
      method = getattr(self, "do_" + self.command, None)
      if method is None:
        self.send_error(501, f"Unsupported method ({self.command!r})")
        return
      method()
      self.wfile.flush()
    except TimeoutError as e:
      self.close_connection = True
      self._timed_out(e)
    except ConnectionError as e:
      self.close_connection = True
      log.info("%s %s: the client went away (%s)", self.address_string(), self._what(), e)

  def _what(self) -> str:
    return f"{self.command} {self.path}" if self.command else "request"

  def _timed_out(self, e: TimeoutError) -> None:
    who, what = self.address_string(), self._what()
    if self._responding:
      log.warning("%s %s: the client stopped reading the response for %g s; connection closed", who, what,
                  self.server.request_timeout_s)
      self.server.count("timeouts")
      return
    if not isinstance(e, _Stalled):  # an idle connection: nothing of a request had come
      log.debug("%s: idle for %g s; connection closed", who, self.server.keepalive_s)
      return
    self.server.count("timeouts")
    log.warning("%s %s: the client sent nothing for %g s in the middle of the %s; answered 408 and closed the "
                "connection (--request_timeout_s)", who, what, self.server.request_timeout_s, self._stage)
    message = (f"request timeout: nothing received for {self.server.request_timeout_s:g} s in the middle of the "
               f"{self._stage}")
    try:
      self.wfile.write(_raw_response(408, "Request Timeout", message))
    except OSError:
      pass

  def address_string(self) -> str:
    return str(self.client_address[0])

  def send_response_only(self, code, message=None):
    if code >= 200:  # a final response (not "100 Continue"): a timeout from here on is the client not reading
      self._responding = True
    super().send_response_only(code, message)

  def handle_expect_100(self):
    """`Expect: 100-continue` (curl sends it for bodies over 1 MB): a body over the limit is refused before the
    client sends it, not after "100 Continue"."""
    if self.command == "POST":
      try:
        self._content_length()
      except BadRequest as e:
        self._json(e.status, {"error": e.message}, e.headers)
        return False
    return super().handle_expect_100()

  def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
    if self.server.waiting:  # others wait for a thread: this one goes to them rather than idle in keep-alive
      self.close_connection = True
    self.send_response(status)
    self.send_header("Content-Type", ctype)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.send_header("X-Content-Type-Options", "nosniff")
    for k, v in (extra or {}).items():
      self.send_header(k, v)
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _json(self, status: int, obj: dict, extra: dict | None = None) -> None:
    self._send(status, json.dumps(obj).encode(), "application/json", extra)

  def do_GET(self):
    path = urllib.parse.urlsplit(self.path).path
    if path == "/api/info":
      return self._json(200, self.app.info())
    if path in _STATIC:
      name, ctype = _STATIC[path]
      return self._send(200, (STATIC_DIR / name).read_bytes(), ctype, {"Content-Security-Policy": _CSP})
    if path == "/favicon.ico":
      return self._send(204, b"", "image/x-icon")
    return self._json(404, {"error": f"no such page: {path}"})

  do_HEAD = do_GET

  def do_POST(self):
    path = urllib.parse.urlsplit(self.path).path
    reserved = 0
    try:
      route = self.app.routes().get(path)
      n = self._content_length()
      reserved = self._reserve(n)
      body = self._read_json(n)
      if route is None:
        raise BadRequest(f"no such endpoint: POST {path}", 404)
      self._json(200, route(body))
    except BadRequest as e:
      self._json(e.status, {"error": e.message}, e.headers)
    except Exception as e:
      if self._responding or isinstance(e, (_Stalled, ConnectionError)):
        raise  # the connection itself failed: handle_one_request says so in one line
      log.exception("POST %s failed", path)
      self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})
    finally:
      self.app.inflight.release(reserved)

  def _content_length(self) -> int:
    """The request's body size; 411 / 400 / 413 (the limit named) from the headers alone, before any is read."""
    length = self.headers.get("Content-Length")
    if length is None:
      self.close_connection = True
      raise BadRequest("a Content-Length header is required (chunked uploads are not accepted)", 411)
    try:
      n = int(length)
      if n < 0:
        raise ValueError
    except ValueError:
      self.close_connection = True
      raise BadRequest(f"bad Content-Length {length!r}") from None
    if n > self.app.max_upload_bytes:
      self.close_connection = True  # the body stays unread: this connection cannot be reused
      raise BadRequest(f"request body of {n / 2**20:.1f} MB ({n} bytes) is over the server's limit of "
                       f"{self.app.max_upload_mb:g} MB (--max_upload_mb; images travel base64-encoded, about 4/3 of "
                       "the file size)", 413)
    return n

  def _reserve(self, n: int) -> int:
    """Takes n bytes of the in-flight budget (waiting up to budget_wait_s for them), or refuses with 503."""
    app = self.app
    if n == 0 or app.inflight.acquire(n, app.budget_wait_s):
      return n
    self.close_connection = True  # the body stays unread
    used_mb, limit_mb = app.inflight.used / 2**20, app.max_inflight_mb
    self.server.count("over_budget")
    app.throttled.warning("budget", "busy: refused a %.1f MB request from %s with 503: %.1f MB of request bodies "
                          "are in memory and the limit is %g MB (--max_inflight_mb)", n / 2**20,
                          self.address_string(), used_mb, limit_mb)
    raise BadRequest(f"the painter is busy: {used_mb:.1f} MB of other requests are being processed and this one "
                     f"({n / 2**20:.1f} MB) would pass the server's limit of {limit_mb:g} MB in flight "
                     f"(--max_inflight_mb); try again in a moment", 503, {"Retry-After": str(RETRY_AFTER_S)})

  def _read_json(self, n: int) -> dict:
    """The request's JSON object (n body bytes, read in chunks: a stall shows where it happened)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    try:
      while got < n:
        self._stage = f"request body ({got} of {n} bytes received)"
        k = self.rfile.readinto1(view[got:got + _CHUNK])  # at most one recv, none when the buffer has some
        if not k:
          self.close_connection = True
          raise ConnectionAbortedError(f"the client closed the connection after {got} of {n} body bytes")
        got += k
    finally:
      view.release()
    self._stage = "request"
    ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
      raise BadRequest(f"Content-Type must be application/json, got {ctype or 'none'!r}", 415)
    try:
      body = json.loads(buf)
    except (ValueError, UnicodeDecodeError) as e:
      raise BadRequest(f"request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
      raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body
