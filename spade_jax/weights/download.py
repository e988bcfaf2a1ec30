"""Download-and-cache for pretrained weights (VGG19 perceptual loss, FID Inception, UperNet-101 / DeepLabV2).

Training machines are often offline, so a missing file that cannot be fetched raises
an error saying exactly where to put it; downloads are hash-checked and renamed into
place atomically so a half-written file is never mistaken for a good one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from spade_jax.errors import UserError

__all__ = ["PRETRAINED", "Pretrained", "WeightsUnavailableError", "cache_dir", "fetch", "sha256_file"]


class WeightsUnavailableError(UserError, RuntimeError):
  """The weights are not cached and could not be downloaded (e.g. no internet); the message says where to put
  them. A RuntimeError too, as before."""


@dataclass(frozen=True)
class Pretrained:
  url: str
  filename: str
  sha256_prefix: str | None = None  # torchvision/torch.hub put the first 8 hex digits in the name


PRETRAINED: dict[str, Pretrained] = {
  "vgg19": Pretrained("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "vgg19-dcbb9e9d.pth", "dcbb9e9d"),
  "fid_inception": Pretrained(
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth",
    "6726825d",
  ),
  # Segmentation networks of the SPADE evaluation protocol (spade_jax.evaluation.upernet / .deeplab). The servers
  # publish no hashes and the names carry none, so these are not hash-checked. mit-semseg's two files have generic
  # names; the cache keeps them under a model-specific name.
  "upernet101_ade20k_encoder": Pretrained(
    "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/encoder_epoch_50.pth",
    "ade20k-resnet101-upernet_encoder_epoch_50.pth",
  ),
  "upernet101_ade20k_decoder": Pretrained(
    "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/decoder_epoch_50.pth",
    "ade20k-resnet101-upernet_decoder_epoch_50.pth",
  ),
  "deeplabv2_cocostuff164k": Pretrained(
    "https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
    "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
    "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
  ),
}

# Errors that mean "could not get the bytes", as opposed to e.g. a full local disk.
_NET_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def cache_dir() -> Path:
  """``$SPADE_JAX_CACHE``, else ``$XDG_CACHE_HOME/spade_jax``, else ``~/.cache/spade_jax``."""
  if os.environ.get("SPADE_JAX_CACHE"):
    return Path(os.environ["SPADE_JAX_CACHE"]).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME")
  return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spade_jax"


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def _entry(name_or_url: str, sha256_prefix: str | None) -> Pretrained:
  if name_or_url in PRETRAINED:
    return PRETRAINED[name_or_url]
  if "://" not in name_or_url:
    raise KeyError(f"unknown pretrained weights {name_or_url!r}; known: {sorted(PRETRAINED)}")
  for e in PRETRAINED.values():
    if e.url == name_or_url:
      return e
  filename = Path(urllib.parse.urlparse(name_or_url).path).name
  if not filename:
    raise ValueError(f"cannot derive a file name from URL {name_or_url!r}; pass path=")
  return Pretrained(name_or_url, filename, sha256_prefix)


def _download(url: str, out, progress: bool, label: str) -> str:
  """Stream ``url`` into ``out``; return the sha256 hex digest."""
  h, done, t0, shown = hashlib.sha256(), 0, time.monotonic(), 0.0
  with urllib.request.urlopen(url, timeout=60) as r:
    total = int(r.headers.get("Content-Length") or 0)
    while chunk := r.read(1 << 20):
      out.write(chunk)
      h.update(chunk)
      done += len(chunk)
      now = time.monotonic()
      if progress and (now - shown > 0.5 or done == total):
        shown, rate = now, done / max(now - t0, 1e-6)
        pct = f" ({100 * done / total:5.1f}%)" if total else ""
        sys.stderr.write(f"\r{label}: {done / 2**20:.1f}/{total / 2**20:.1f} MiB{pct} {rate / 2**20:.1f} MiB/s")
        sys.stderr.flush()
  if progress:
    sys.stderr.write("\n")
  if total and done != total:
    raise http.client.IncompleteRead(b"", total - done)
  return h.hexdigest()


def fetch(name_or_url: str, *, path=None, progress: bool = True, sha256_prefix: str | None = None) -> Path:
  """Return a local path to the named (see ``PRETRAINED``) or URL-given weights file.

  Uses the cached copy at ``path`` (default ``cache_dir()/<filename>``) if its sha256
  prefix matches, else downloads it. ``sha256_prefix`` is for plain URLs only; registry
  entries carry their own.
  """
  e = _entry(name_or_url, sha256_prefix)
  want = e.sha256_prefix.lower() if e.sha256_prefix else None
  dest = Path(path) if path is not None else cache_dir() / e.filename
  stale = dest.is_file()
  if stale and (want is None or sha256_file(dest).startswith(want)):
    return dest
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out:
      try:
        digest = _download(e.url, out, progress, dest.name)
      except _NET_ERRORS as err:
        note = " (the file there now failed its sha256 check)" if stale else ""
        raise WeightsUnavailableError(
          f"could not download {e.url}: {err}\n"
          f"expected file: {dest}{note}\n"
          f"Download it on a machine with internet and place it there, "
          f"or set SPADE_JAX_CACHE to a directory that contains {dest.name}."
        ) from err
    if want and not digest.startswith(want):
      raise UserError(
        f"sha256 mismatch for {e.url}: expected prefix {want}, got {digest}; deleted the download (was {tmp})"
      )
    os.replace(tmp, dest)
  finally:
    Path(tmp).unlink(missing_ok=True)
  return dest
