"""spade_jax.weights.download, offline: local http.server / file:// stand in for the internet."""

import functools
import hashlib
import http.server
import socket
import threading

import pytest

from spade_jax.weights import download
from spade_jax.weights.download import Pretrained, WeightsUnavailableError, cache_dir, fetch

PAYLOAD = b"fake weights " * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  d = tmp_path / "cache"
  monkeypatch.setenv("SPADE_JAX_CACHE", str(d))
  return d


@pytest.fixture
def server(tmp_path):
  """Serve tmp_path/www on 127.0.0.1 at a free port; yields the base URL."""
  www = tmp_path / "www"
  www.mkdir()
  (www / "toy.pth").write_bytes(PAYLOAD)

  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
      pass

  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=www))
  t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
  t.start()
  yield f"http://127.0.0.1:{srv.server_address[1]}"
  srv.shutdown()
  srv.server_close()
  t.join()


def _closed_port_url():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/toy-{SHA[:8]}.pth"


def test_registry():
  assert download.PRETRAINED["vgg19"] == Pretrained(
    "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "vgg19-dcbb9e9d.pth", "dcbb9e9d"
  )
  fid = download.PRETRAINED["fid_inception"]
  assert fid.url.endswith("/fid_weights/pt_inception-2015-12-05-6726825d.pth")
  assert fid.sha256_prefix == "6726825d"
  with pytest.raises(KeyError, match="vgg19"):
    fetch("no_such_model")


def test_cache_dir(monkeypatch, tmp_path):
  monkeypatch.delenv("SPADE_JAX_CACHE", raising=False)
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert cache_dir() == tmp_path / ".cache" / "spade_jax"
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cache_dir() == tmp_path / "xdg" / "spade_jax"
  monkeypatch.setenv("SPADE_JAX_CACHE", str(tmp_path / "c"))
  assert cache_dir() == tmp_path / "c"


def test_cache_hit_needs_no_network(cache, monkeypatch):
  monkeypatch.setitem(download.PRETRAINED, "toy", Pretrained(_closed_port_url(), "toy.pth", SHA[:8]))
  cache.mkdir()
  (cache / "toy.pth").write_bytes(PAYLOAD)
  assert fetch("toy") == cache / "toy.pth"


def test_download_http(cache, server, monkeypatch, capfd):
  monkeypatch.setitem(download.PRETRAINED, "toy", Pretrained(f"{server}/toy.pth", "toy.pth", SHA[:8]))
  p = fetch("toy")
  assert p == cache / "toy.pth" and p.read_bytes() == PAYLOAD
  err = capfd.readouterr().err
  assert "toy.pth:" in err and "MiB/s" in err
  assert sorted(x.name for x in cache.iterdir()) == ["toy.pth"]  # no temp files left
  p.write_bytes(b"corrupted")  # a bad cached copy is replaced
  assert fetch("toy", progress=False).read_bytes() == PAYLOAD


def test_download_progress_line(cache, server, capfd):
  fetch(f"{server}/toy.pth", path=cache / "x" / "y.pth")
  err = capfd.readouterr().err
  assert "y.pth: 0.0/0.0 MiB (100.0%)" in err and "MiB/s" in err
  assert (cache / "x" / "y.pth").read_bytes() == PAYLOAD


def test_download_file_url(cache, tmp_path):
  src = tmp_path / "src.pth"
  src.write_bytes(PAYLOAD)
  p = fetch(src.as_uri(), progress=False, sha256_prefix=SHA[:12])
  assert p == cache / "src.pth" and p.read_bytes() == PAYLOAD


def test_hash_mismatch(cache, server, monkeypatch):
  monkeypatch.setitem(download.PRETRAINED, "toy", Pretrained(f"{server}/toy.pth", "toy.pth", "deadbeef"))
  with pytest.raises(ValueError, match=rf"expected prefix deadbeef, got {SHA}"):
    fetch("toy", progress=False)
  assert list(cache.iterdir()) == []  # bad temp file deleted, nothing installed


def test_offline_message(cache, monkeypatch):
  url = _closed_port_url()
  monkeypatch.setitem(download.PRETRAINED, "toy", Pretrained(url, "toy.pth", SHA[:8]))
  with pytest.raises(WeightsUnavailableError) as ei:
    fetch("toy", progress=False)
  msg = str(ei.value)
  assert url in msg and str(cache / "toy.pth") in msg
  assert "machine with internet" in msg and "SPADE_JAX_CACHE" in msg
  assert isinstance(ei.value, RuntimeError)
  assert list(cache.iterdir()) == []


def test_http_404_is_unavailable(cache, server):
  with pytest.raises(WeightsUnavailableError, match="404"):
    fetch(f"{server}/missing.pth", progress=False)
