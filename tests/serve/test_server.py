"""The painter's JSON API against a real server on a free loopback port (tiny random-weight VAE checkpoint)."""
import base64
import collections
import http.client
import io
import json
import logging
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

import spade_jax
from spade_jax import inference
from spade_jax.errors import UserError
from spade_jax.serve import __main__ as serve_main
from spade_jax.serve.server import PainterServer, default_label_map, is_loopback
from tests.serve.conftest import SIZE, tiny_config, write_checkpoint

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for loopback


def request(server, path, body=None, *, raw=None, ctype="application/json"):
  """-> (status, decoded JSON); GET without a body."""
  data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
  req = urllib.request.Request(server.url + path, data=data, headers={"Content-Type": ctype} if data else {})
  try:
    with _OPENER.open(req, timeout=120) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def png(a, fmt="PNG") -> str:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(a)).save(buf, fmt)
  return base64.b64encode(buf.getvalue()).decode()


def image(resp) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(resp["image"]))))


def labels(k=0) -> np.ndarray:
  """A 64x64 index map: class 0 over class 5, with a class-2 block whose position depends on k."""
  a = np.zeros((SIZE, SIZE), np.uint8)
  a[38:] = 5
  a[10 + k:22 + k, 10:30] = 2
  return a


def test_info_and_static_page(server):
  status, info = request(server, "/api/info")
  assert status == 200
  assert info["image_size"] == [SIZE, SIZE] and info["use_vae"] and info["has_encoder"] and info["step"] == 5
  assert (info["threads"], info["queue_size"], info["max_inflight_mb"]) == (16, 64, 32.0)  # the defaults
  assert [c["name"] for c in info["classes"]] == [f"class_{i}" for i in range(7)]
  assert info["classes"][0]["color"] == "#" + "".join(f"{int(v):02x}" for v in server.model.palette[0])
  ids = np.frombuffer(base64.b64decode(info["default_labels"]["ids"]), np.uint8)
  assert info["default_labels"]["dtype"] == "uint8" and ids.shape == (SIZE * SIZE,)
  with _OPENER.open(server.url + "/", timeout=30) as r:
    page = r.read().decode()
    assert 'id="canvas"' in page and 'id="error"' in page
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
  for path in ("/app.js", "/style.css"):
    with _OPENER.open(server.url + path, timeout=30) as r:
      assert r.status == 200 and len(r.read()) > 500
  assert request(server, "/nope")[0] == 404


def test_synthesize_is_deterministic_and_follows_seed_and_labels(server):
  s, a = request(server, "/api/synthesize", {"labels": png(labels()), "seed": 0})
  assert s == 200, a
  out = image(a)
  assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8 and out.std() > 5
  s, b = request(server, "/api/synthesize", {"labels": png(labels()), "seed": 0})
  assert s == 200 and b["image"] == a["image"]  # same request, same bytes
  other_seed = image(request(server, "/api/synthesize", {"labels": png(labels()), "seed": 1})[1])
  assert np.abs(other_seed.astype(int) - out).mean() > 5
  other_labels = image(request(server, "/api/synthesize", {"labels": png(labels(20)), "seed": 0})[1])
  assert np.abs(other_labels.astype(int) - out).mean() > 1
  # the API equals the notebook API (at the server's batch size: XLA may round differently at another one)
  np.testing.assert_array_equal(out, server.model.synthesize(np.stack([labels()] * 4), seed=0)[0])
  # a colour-coded map in the model's palette, a data URL, and a 2x map (NEAREST-resized) give the same image
  colour = server.model.colorize(labels())[0]
  data_url = "data:image/png;base64," + png(colour)
  assert request(server, "/api/synthesize", {"labels": data_url})[1]["image"] == a["image"]
  s, big = request(server, "/api/synthesize", {"labels": png(labels().repeat(2, 0).repeat(2, 1))})
  assert s == 200 and big["resized"] and big["image"] == a["image"]
  # /api/labels hands the canvas the decoded ids
  s, dec = request(server, "/api/labels", {"image": png(colour)})
  assert s == 200 and dec["colour_coded"] and not dec["resized"]
  np.testing.assert_array_equal(np.frombuffer(base64.b64decode(dec["ids"]), np.uint8).reshape(SIZE, SIZE), labels())


def test_style_image_changes_the_output(server):
  rng = np.random.default_rng(3)
  style = (rng.uniform(0, 255, (1, 1, 3)) * np.linspace(0.2, 1, SIZE)[:, None, None]).astype(np.uint8)
  style = np.broadcast_to(style, (SIZE, SIZE, 3)).copy()
  s, st = request(server, "/api/style", {"image": png(style, "JPEG")})
  assert s == 200, st
  assert request(server, "/api/style", {"image": png(style, "JPEG")})[1]["style_id"] == st["style_id"]
  plain = image(request(server, "/api/synthesize", {"labels": png(labels()), "seed": 0})[1])
  s, styled = request(server, "/api/synthesize", {"labels": png(labels()), "seed": 0, "style_id": st["style_id"]})
  assert s == 200 and styled["style_id"] == st["style_id"]
  styled = image(styled)
  assert np.abs(styled.astype(int) - plain).mean() > 5
  # z is the encoder's mean of the uploaded image, as Synthesizer.synthesize(style=...) computes it
  mu, _ = server.model.encode_style(Image.open(io.BytesIO(base64.b64decode(png(style, "JPEG")))))
  np.testing.assert_array_equal(styled, server.model.synthesize(np.stack([labels()] * 4), z=mu.repeat(4, 0))[0])
  s, err = request(server, "/api/synthesize", {"labels": png(labels()), "style_id": "0123456789abcdef"})
  assert s == 400 and "unknown style_id" in err["error"]


def _truncated_png() -> str:
  raw = base64.b64decode(png(np.random.default_rng(0).integers(0, 7, (SIZE, SIZE), np.uint8)))
  return base64.b64encode(raw[: len(raw) // 2]).decode()


def _huge_png() -> str:
  buf = io.BytesIO()
  Image.new("L", (5000, 5000)).save(buf, "PNG")
  return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("path,body,status,needle", [
    ("/api/synthesize", {"labels": base64.b64encode(b"certainly not a PNG").decode()}, 400, "not an image"),
    ("/api/synthesize", {"labels": "__truncated__"}, 400, "not an image"),
    ("/api/synthesize", {"labels": png(np.zeros((32, SIZE), np.uint8))}, 400, "label map is 64x32 px"),
    ("/api/synthesize", {"labels": png(np.zeros((SIZE, 66), np.uint8))}, 400, "the model makes 64x64"),
    ("/api/synthesize", {"labels": "__huge__"}, 400, "5000x5000 px; images with a side above 4096"),
    ("/api/synthesize", {"labels": png(np.full((SIZE, SIZE, 3), (1, 2, 3), np.uint8))}, 400, "(1,2,3) x4096"),
    ("/api/synthesize", {"labels": png(np.full((SIZE, SIZE), 9, np.uint8))}, 400, "label id 9"),
    ("/api/synthesize", {"labels": "%%%"}, 400, "not valid base64"),
    ("/api/synthesize", {"seed": 1}, 400, "missing 'labels'"),
    ("/api/synthesize", {"labels": png(labels()), "seed": -1}, 400, "seed must be an integer"),
    ("/api/synthesize", {"labels": png(labels()), "seed": "7"}, 400, "seed must be an integer"),
    ("/api/style", {"image": base64.b64encode(b"GIF89a nope").decode()}, 400, "style image is not an image"),
    ("/api/labels", {"image": png(np.full((SIZE, SIZE), 200, np.uint8))}, 400, "label id 200"),
    ("/api/nope", {}, 404, "no such endpoint"),
])
def test_bad_requests_name_the_problem(server, path, body, status, needle):
  made = {"__truncated__": _truncated_png, "__huge__": _huge_png}
  body = {k: made[v]() if isinstance(v, str) and v in made else v for k, v in body.items()}
  s, err = request(server, path, body)
  assert (s, needle in err.get("error", "")) == (status, True), err


def test_malformed_requests(server):
  s, err = request(server, "/api/synthesize", raw=b'{"labels": ')
  assert s == 400 and "not valid JSON" in err["error"]
  s, err = request(server, "/api/synthesize", raw=b"[1, 2]")
  assert s == 400 and "JSON object" in err["error"]
  s, err = request(server, "/api/synthesize", raw=b"{}", ctype="text/plain")
  assert s == 415 and "application/json" in err["error"]


def test_body_over_the_limit_is_refused_before_it_is_read(server):
  conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=30)
  conn.putrequest("POST", "/api/synthesize")
  conn.putheader("Content-Type", "application/json")
  conn.putheader("Content-Length", str(3 * 2**20))
  conn.endheaders()  # no body is sent: the answer must come from the header alone
  r = conn.getresponse()
  err = json.loads(r.read())
  conn.close()
  assert r.status == 413 and "over the server's limit of 1 MB" in err["error"], err
  conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=30)
  conn.putrequest("POST", "/api/synthesize")
  conn.endheaders()
  r = conn.getresponse()
  assert r.status == 411 and "Content-Length" in json.loads(r.read())["error"]
  conn.close()
  assert request(server, "/api/info")[0] == 200  # and the server goes on


def test_requests_are_batched_and_the_generator_compiles_once(server):
  b = server.batcher
  compiled = inference._jitted("cpu")[0]._cache_size()
  assert request(server, "/api/synthesize", {"labels": png(labels()), "seed": 0})[0] == 200  # a batch of one
  calls0, requests0 = b.calls, b.requests
  results, errors = {}, []
  gate = threading.Barrier(6)

  def one(seed):
    try:
      gate.wait(timeout=30)
      results[seed] = request(server, "/api/synthesize", {"labels": png(labels(seed)), "seed": seed})
    except Exception as e:
      errors.append(e)

  threads = [threading.Thread(target=one, args=(k,)) for k in range(6)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors and all(results[k][0] == 200 for k in range(6)), (errors, results)
  assert b.requests - requests0 == 6 and b.calls - calls0 < 6, (b.calls - calls0, dict(b.fills))
  gate = threading.Barrier(3)
  threads = [threading.Thread(target=one, args=(k,)) for k in (6, 7, 8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors
  # several fill levels ran, all padded to one shape: no compilation after warm-up
  assert len(b.fills) >= 2 and b.shapes == {(4, SIZE, SIZE)}, (dict(b.fills), b.shapes)
  assert inference._jitted("cpu")[0]._cache_size() == compiled
  # an image does not depend on its batch neighbours
  for k in (0, 3):
    alone = request(server, "/api/synthesize", {"labels": png(labels(k)), "seed": k})[1]
    assert np.abs(image(alone).astype(int) - image(results[k][1])).max() <= 1


def test_non_vae_instance_edge_model_and_vae_without_encoder(tmp_path, recwarn):
  edge = spade_jax.load(write_checkpoint(tmp_path / "edge", tiny_config(use_vae=False, no_instance=False, ngf=4)))
  with PainterServer(edge, port=0, batch_size=1) as srv:
    srv.warm_up()
    srv.start()
    info = request(srv, "/api/info")[1]
    assert not info["use_vae"] and info["instance_edges"] and "no VAE" in info["style_note"]
    s, out = request(srv, "/api/synthesize", {"labels": png(labels())})
    assert s == 200
    # the label map's class boundaries stand in for instance maps, as in the notebook API (whose warning is
    # expected there, and not raised by the server)
    with pytest.warns(UserWarning, match="class boundaries"):
      expected = edge.synthesize(labels())[0]
    np.testing.assert_array_equal(image(out), expected)
    s, err = request(srv, "/api/style", {"image": png(np.zeros((SIZE, SIZE, 3), np.uint8))})
    assert s == 400 and "without the VAE" in err["error"]
    s, err = request(srv, "/api/synthesize", {"labels": png(labels()), "style_id": "abc"})
    assert s == 400 and "without the VAE" in err["error"]
  assert not [w for w in recwarn if "class boundaries" in str(w.message) and w.filename.endswith("server.py")]

  no_e = spade_jax.load(write_checkpoint(tmp_path / "no_e", tiny_config(), with_encoder=False))
  with PainterServer(no_e, port=0).start() as srv:  # never compiled: the request is refused before any synthesis
    info = request(srv, "/api/info")[1]
    assert info["use_vae"] and not info["has_encoder"] and "no encoder" in info["style_note"]
    s, err = request(srv, "/api/style", {"image": png(np.zeros((SIZE, SIZE, 3), np.uint8))})
    assert s == 400 and "has no encoder" in err["error"]


def _cli_error(capsys, argv) -> str:
  """Runs the CLI, which must end with exit status 2 and one `error: ...` line on stderr; -> that line."""
  with pytest.raises(SystemExit) as exit_info:
    serve_main.main(argv)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2, err
  assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
  return err


def test_command_line_start_up_errors_and_host_warning(tmp_path, capsys, vae_checkpoint):
  assert "no checkpoint at" in _cli_error(capsys, [f"--checkpoint={tmp_path / 'missing'}"])
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "readme.txt").write_text("not a checkpoint")
  err = _cli_error(capsys, [f"--checkpoint={tmp_path / 'notes'}"])
  assert "holds no checkpoint" in err and "expected a workdir" in err
  assert "--threads=0 must be an integer" in _cli_error(capsys, ["--checkpoint=x", "--threads=0"])
  assert "--port: invalid int value: 'abc'" in _cli_error(capsys, ["--checkpoint=x", "--port=abc"])
  assert "required: --checkpoint" in _cli_error(capsys, [])
  err = _cli_error(capsys, ["--checkpoint=x", "--max_inflight_mb=1", "--queue_size=-1", "--request_timeout_s=nan"])
  assert "--max_inflight_mb=1 is below --max_upload_mb=8" in err and "--queue_size=-1" in err, err
  assert "--request_timeout_s=nan" in err
  with socket.socket() as busy:  # the address is in use: one line naming it, after the checkpoint loaded
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    err = _cli_error(capsys, [f"--checkpoint={vae_checkpoint}", f"--port={port}"])
  assert f"cannot listen on --host=127.0.0.1 --port={port}: Address already in use" in err and "--port=0" in err
  with pytest.raises(UserError, match="--batch_size=0 must be an integer >= 1"):
    serve_main.parse_args(["--checkpoint=x", "--batch_size=0"])
  with pytest.raises(UserError, match="--threads=0"):
    PainterServer(None, port=0, threads=0)  # the library checks the same limits, before anything else
  assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
  assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


def test_non_loopback_host_logs_a_warning(server, caplog):
  with caplog.at_level(logging.WARNING, logger="spade_jax.serve"):
    PainterServer(server.model, host="0.0.0.0", port=0).close()  # bound, never served
  assert "not a loopback address" in caplog.text


def test_demo_checkpoints_get_landscape_names_and_a_sky_over_grass_canvas():
  from configs import demo
  from spade_jax import colormap
  from spade_jax.data import demo as demo_data
  names, palette = colormap.for_data(demo.get_config().data)  # what a demo checkpoint's Synthesizer shows
  assert names == ["sky", "cloud", "mountain", "water", "sand", "grass", "tree"]
  assert (palette == demo_data.COLORS).all()
  ids = default_label_map(names, (64, 64))
  assert (ids[:38] == 0).all() and (ids[38:] == 5).all()
  assert (default_label_map([f"class_{i}" for i in range(7)], (64, 32)) == 0).all()


# -- limits under load ----------------------------------------------------------------------------------------------
def _head(path: str, length: int, extra: str = "") -> bytes:
  return (f"POST {path} HTTP/1.1\r\nHost: painter\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
          f"{extra}\r\n").encode()


def _connect(srv) -> socket.socket:
  return socket.create_connection(srv.httpd.server_address[:2], timeout=30)


def _parse(raw: bytes):
  """-> (status, headers, JSON body) of one raw response; status None when the connection closed without one."""
  head, _, body = raw.partition(b"\r\n\r\n")
  if not head:
    return None, {}, None
  lines = head.decode("latin-1").split("\r\n")
  headers = dict(line.split(": ", 1) for line in lines[1:])
  return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def _read(sock: socket.socket, until: bytes | None = None) -> bytes:
  """What the server sends, up to its closing its side (or up to `until`)."""
  raw = b""
  while (until is None or until not in raw) and (chunk := sock.recv(65536)):
    raw += chunk
  return raw


def _answers(socks, count: int, skip=(), timeout: float = 30.0) -> dict:
  """Reads the sockets' answers (each up to the server closing its side) as they come, until `count` have come;
  -> {socket index: (seconds after the call, status, headers, body)}; a reset is status 'reset'."""
  sel, bufs, done, t0 = selectors.DefaultSelector(), {}, {}, time.monotonic()
  for i, s in enumerate(socks):
    if i not in skip:
      s.setblocking(False)
      sel.register(s, selectors.EVENT_READ, i)
      bufs[i] = b""
  while len(done) < count and time.monotonic() - t0 < timeout:
    for key, _ in sel.select(0.1):
      i, s = key.data, key.fileobj
      try:
        chunk = s.recv(65536)
      except BlockingIOError:
        continue
      except ConnectionResetError:
        done[i] = (time.monotonic() - t0, "reset", {}, None)
      else:
        if chunk:
          bufs[i] += chunk
          continue
        done[i] = (time.monotonic() - t0, *_parse(bufs[i]))
      sel.unregister(s)
  sel.close()
  return done


def test_stalled_clients_hold_only_the_thread_pool_get_408_and_no_traceback(server, caplog, capfd):
  body = json.dumps({"image": png(labels())}).encode()
  stalls = [b"POST /api/lab",                              # mid request line
            _head("/api/labels", len(body))[:-12],         # mid headers
            _head("/api/labels", len(body)) + body[:10]]    # mid body
  before = threading.active_count()
  with caplog.at_level(logging.INFO, logger="spade_jax.serve"), \
       PainterServer(server.model, port=0, threads=2, queue_size=1, request_timeout_s=1.0) as srv:
    srv.start()
    socks = []
    for i in range(20):  # 2 run, 1 waits, 17 are refused at once
      s = _connect(srv)
      s.sendall(stalls[min(i, 2)])
      socks.append(s)
    refused = _answers(socks, 17)
    threads_while_stalled = threading.active_count() - before
    timed_out = _answers(socks, 3, skip=refused)
    # the refusals came at once (before any stalled request timed out), all from the accept loop, with Retry-After
    assert sorted(refused) == list(range(3, 20)) and sorted(timed_out) == [0, 1, 2], (refused, timed_out)
    assert all(a[1] == 503 and a[2]["Retry-After"] == "2" and "--threads" in a[3]["error"] for a in refused.values())
    assert max(a[0] for a in refused.values()) < 1.0
    # the server, its 2 workers, the closer and the batcher: no thread per connection
    assert threads_while_stalled <= 5 and srv.httpd.peak_busy == 2, threads_while_stalled
    assert [timed_out[i][1] for i in range(3)] == [408, 408, 408], timed_out
    assert "middle of the request line" in timed_out[0][3]["error"]
    assert "middle of the request headers" in timed_out[1][3]["error"]
    assert f"middle of the request body (10 of {len(body)} bytes received)" in timed_out[2][3]["error"]
    assert timed_out[2][0] > 1.5  # it waited in the queue for a thread, then had its own 1 s
    assert srv.httpd.stats["timeouts"] == 3 and srv.httpd.stats["rejected"] == 17
    assert request(srv, "/api/labels", {"image": png(labels())})[0] == 200  # and it goes on serving
    for s in socks:
      s.close()
  assert threading.active_count() <= before  # close() stopped them all
  warnings = [r for r in caplog.records if r.name == "spade_jax.serve" and r.levelno >= logging.WARNING]
  assert sum("answered 408" in r.getMessage() for r in warnings) == 3, [r.getMessage() for r in warnings]
  assert sum("refused a connection" in r.getMessage() for r in warnings) == 1  # the rest counted into the next
  assert not [r for r in warnings if r.exc_info or r.levelno >= logging.ERROR]
  assert "Traceback" not in capfd.readouterr().err


def test_a_burst_of_50_simultaneous_uploads_is_answered_without_resets(server):
  body = json.dumps({"image": png(labels()), "pad": "x" * 65536}).encode()  # a body makes a full backlog reset
  gate, outcomes = threading.Barrier(50), []

  def one():
    try:
      gate.wait(timeout=30)
      conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=60)
      conn.request("POST", "/api/labels", body, {"Content-Type": "application/json"})
      r = conn.getresponse()
      r.read()
      conn.close()
      outcomes.append(r.status)
    except Exception as e:  # noqa: BLE001
      outcomes.append(repr(e))

  threads = [threading.Thread(target=one) for _ in range(50)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert outcomes == [200] * 50, collections.Counter(outcomes)
  assert server.httpd.request_queue_size == 128 and server.httpd.peak_busy <= server.httpd.threads == 16


def test_request_bodies_in_flight_stay_under_the_budget(server):
  def upload(n: int) -> bytes:
    head = json.dumps({"image": png(labels()), "pad": ""}).encode()
    return head[:-2] + b"x" * (n - len(head)) + head[-2:]

  big, other, small = upload(700_000), upload(600_000), upload(200_000)
  with PainterServer(server.model, port=0, max_upload_mb=1, max_inflight_mb=1, budget_wait_s=0) as srv:
    srv.start()
    holder = _connect(srv)  # holds 700 kB of the 1 MB budget while it sends its body slowly
    holder.sendall(_head("/api/labels", len(big)) + big[:1000])
    for _ in range(300):
      if srv.inflight.used:
        break
      time.sleep(0.01)
    assert srv.inflight.used == len(big)
    # 600 kB more would pass the budget: refused at once (budget_wait_s=0), unread, with the limit named
    t = time.monotonic()
    conn = _connect(srv)
    conn.sendall(_head("/api/labels", len(other)))
    status, headers, err = _parse(_read(conn))
    conn.close()
    assert status == 503 and headers["Retry-After"] == "2" and time.monotonic() - t < 5
    assert "over" not in err["error"] and "limit of 1 MB in flight (--max_inflight_mb)" in err["error"], err
    assert request(srv, "/api/labels", raw=small)[0] == 200  # 200 kB more fits
    # with waiting allowed, the 600 kB request waits for the holder to finish, then runs
    srv.budget_wait_s = 30
    waited = {}
    waiter = threading.Thread(target=lambda: waited.update(r=request(srv, "/api/labels", raw=other)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and srv.inflight.used == len(big)
    holder.sendall(big[1000:])
    holder.shutdown(socket.SHUT_WR)  # no next request: the server closes its side after the answer
    assert _parse(_read(holder))[0] == 200
    waiter.join(timeout=60)
    holder.close()
    assert waited["r"][0] == 200, waited
    for _ in range(300):  # given back once the response is out
      if not srv.inflight.used:
        break
      time.sleep(0.01)
    assert srv.inflight.peak <= srv.inflight.limit == 2**20 and srv.inflight.used == 0
    assert srv.httpd.stats["over_budget"] == 1


def test_a_body_over_the_limit_is_refused_before_100_continue(server):
  with _connect(server) as conn:
    conn.sendall(_head("/api/synthesize", 3 * 2**20, "Expect: 100-continue\r\n"))
    status, _, err = _parse(_read(conn))
  assert status == 413 and "over the server's limit of 1 MB" in err["error"]
  with _connect(server) as conn:  # within the limit: "100 Continue", then the answer
    body = json.dumps({"image": png(labels())}).encode()
    conn.sendall(_head("/api/labels", len(body), "Expect: 100-continue\r\n"))
    assert _read(conn, until=b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.sendall(body)
    conn.shutdown(socket.SHUT_WR)
    raw = _read(conn)
  assert _parse(raw)[0] == 200
