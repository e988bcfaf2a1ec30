"""The painter in real headless Chromium (Debian's package) driven by Playwright: paint a stroke, see the synthesis
change where it was painted, upload a style image, see the output change; takes a screenshot of the page (the
README's docs/serve_screenshot.png is written when SPADE_JAX_SCREENSHOT=docs/serve_screenshot.png is set).

Without /usr/bin/chromium the test skips (apt-get install chromium); with SPADE_JAX_REQUIRE_BROWSER=1 (CI) it fails.
"""
import base64
import io
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import SIZE

CHROMIUM = "/usr/bin/chromium"
# Playwright cannot download its own browsers here; these flags keep Chromium off the (closed) network.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = pathlib.Path(__file__).resolve().parents[2]


def _unavailable(msg):
  if os.environ.get("SPADE_JAX_REQUIRE_BROWSER") == "1":
    pytest.fail(f"{msg} (SPADE_JAX_REQUIRE_BROWSER=1 requires the browser test to run)")
  pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
  if not os.path.exists(CHROMIUM):
    _unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium (Debian's package) to run the browser test")
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    _unavailable("the playwright package is missing: pip install -r requirements-test.txt")
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    yield b
    b.close()


def _output(page) -> np.ndarray:
  src = page.get_attribute("#output", "src")
  assert src.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")).astype(int)


def _wait_version(page, n):
  # a selector, not wait_for_function: the page's Content-Security-Policy forbids the eval that one needs
  page.wait_for_selector(f'#output[data-version="{n}"]', state="attached", timeout=30_000)


def _png(a) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, "PNG")
  return buf.getvalue()


def test_paint_a_stroke_and_upload_a_style(browser, server, tmp_path):
  page = browser.new_page(viewport={"width": 1100, "height": 640})
  page_errors = []
  page.on("pageerror", lambda e: page_errors.append(str(e)))
  page.goto(server.url)
  _wait_version(page, 1)  # the default label map's synthesis, on load
  before = _output(page)
  assert before.shape == (SIZE, SIZE, 3)
  assert page.is_hidden("#error")

  # paint class 2 with an 8 px brush along row 16, columns 8..40 (model pixels) of the all-class-0 canvas
  page.click('#palette button[data-class="2"]')
  assert page.get_attribute('#palette button[data-class="2"]', "aria-checked") == "true"
  page.select_option("#brush-size", "8")
  box = page.locator("#canvas").bounding_box()
  scale = box["width"] / SIZE
  at = lambda x, y: (box["x"] + x * scale, box["y"] + y * scale)
  page.mouse.move(*at(8, 16))
  page.mouse.down()
  for x in range(8, 41, 2):
    page.mouse.move(*at(x, 16))
  page.mouse.up()
  _wait_version(page, 2)
  after = _output(page)

  # the canvas holds the stroke in class 2's colour
  palette = server.model.palette
  canvas = np.array(page.evaluate(
      "Array.from(document.getElementById('canvas').getContext('2d').getImageData(0, 0, 64, 64).data)"),
      np.uint8).reshape(SIZE, SIZE, 4)[..., :3]
  assert (canvas[16, 10:39] == palette[2]).all() and (canvas[50:, :] == palette[0]).all()

  # the synthesis changed where the stroke is, more than far from it
  diff = np.abs(after - before).mean(-1)
  near, far = diff[10:23, 4:45].mean(), diff[40:, :].mean()
  print(f"output change near the stroke {near:.1f}, far from it {far:.1f} (mean |diff| per pixel)")
  assert near > 5 and near > 1.5 * far, (near, far)

  # a style image through the file input changes the output
  rng = np.random.default_rng(1)
  style = np.broadcast_to((rng.uniform(0, 255, (1, 1, 3)) * np.linspace(0.3, 1, SIZE)[None, :, None]),
                          (SIZE, SIZE, 3)).astype(np.uint8)
  page.set_input_files("#style-file", files=[{"name": "style.png", "mimeType": "image/png", "buffer": _png(style)}])
  _wait_version(page, 3)
  styled = _output(page)
  assert np.abs(styled - after).mean() > 5
  assert page.is_visible("#style-thumb") and page.is_hidden("#error")
  shot = REPO / os.environ["SPADE_JAX_SCREENSHOT"] if os.environ.get("SPADE_JAX_SCREENSHOT") else tmp_path / "page.png"
  shot.parent.mkdir(exist_ok=True)
  page.screenshot(path=str(shot))
  assert 0 < shot.stat().st_size < 200_000

  # a bad upload is reported in the page, with the server's message
  page.set_input_files("#label-file", files=[{"name": "wide.png", "mimeType": "image/png",
                                              "buffer": _png(np.zeros((SIZE, 2 * SIZE), np.uint8))}])
  page.wait_for_selector("#error:not([hidden])", timeout=30_000)
  assert "label map is 128x64 px" in page.text_content("#error")
  assert not page_errors, page_errors
  page.close()
