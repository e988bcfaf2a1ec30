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
import pathlib
import queue
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger("spade_jax.serve")

MAX_SIDE = 4096             # px; larger uploads are refused before their pixels are decoded
ASPECT_TOLERANCE = 0.02     # a label map's width / height may differ this much (relative) from the model's
MAX_SEED = 2**31 - 1
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
  """A request the client must fix: answered with `status` and {"error": message}."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.message, self.status = message, status


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
  """

  def __init__(self, model, host: str = "127.0.0.1", port: int = 8000, *, max_upload_mb: float = 8.0,
               batch_size: int = 4, batch_window_ms: float = 5.0, style_cache: int = 32):
    if max_upload_mb <= 0:
      raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    self.model = model
    self.max_upload_mb = float(max_upload_mb)
    self.max_upload_bytes = int(max_upload_mb * 2**20)
    self.batcher = Batcher(model, batch_size, batch_window_ms / 1000.0)
    self.class_names = list(model.class_names)  # the data set's, or the demo's landscape classes
    self.ids_dtype = np.dtype("<u1") if model.num_classes <= 255 else np.dtype("<u2")
    self.default_labels = default_label_map(self.class_names, model.image_size)
    self._styles: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._styles_lock = threading.Lock()
    self._style_cache = int(style_cache)
    self._latents: dict[int, np.ndarray] = {}
    if not is_loopback(host):
      log.warning("listening on %s, which is not a loopback address: anyone who can reach this machine can use the "
                  "painter (and its CPU/GPU time); the default --host=127.0.0.1 keeps it local", host)
    server_cls = _HTTPServer6 if ":" in host else _HTTPServer
    self.httpd = server_cls((host.strip("[]"), port), _Handler)
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
    """Serves in a background thread (returns at once)."""
    self.batcher.start()
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


# -- HTTP -----------------------------------------------------------------------------------------------------------
class _HTTPServer(http.server.ThreadingHTTPServer):
  daemon_threads = True
  app: PainterServer


class _HTTPServer6(_HTTPServer):
  address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
  server_version = "spade_jax-painter/1"
  protocol_version = "HTTP/1.1"
  timeout = 60  # an idle keep-alive connection gives its thread back after this

  @property
  def app(self) -> PainterServer:
    return self.server.app

  def log_message(self, fmt, *args):
    log.debug("%s %s", self.address_string(), fmt % args)

  def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
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

  def _json(self, status: int, obj: dict) -> None:
    self._send(status, json.dumps(obj).encode(), "application/json")

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
    try:
      route = self.app.routes().get(path)
      body = self._read_json()
      if route is None:
        raise BadRequest(f"no such endpoint: POST {path}", 404)
      self._json(200, route(body))
    except BadRequest as e:
      self._json(e.status, {"error": e.message})
    except Exception as e:
      log.exception("POST %s failed", path)
      self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

  def _read_json(self) -> dict:
    """The request's JSON object; the size limit is checked on Content-Length, before anything is read."""
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
    limit = self.app.max_upload_bytes
    if n > limit:
      self.close_connection = True  # the body stays unread: this connection cannot be reused
      raise BadRequest(f"request body of {n / 2**20:.1f} MB ({n} bytes) is over the server's limit of "
                       f"{self.app.max_upload_mb:g} MB (--max_upload_mb; images travel base64-encoded, about 4/3 of "
                       "the file size)", 413)
    raw = self.rfile.read(n)
    ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
      raise BadRequest(f"Content-Type must be application/json, got {ctype or 'none'!r}", 415)
    try:
      body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
      raise BadRequest(f"request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
      raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body
