"""Screenshot of the painter on a trained checkpoint (the README's docs/serve_screenshot.png).

  .venv/bin/python scripts/serve_screenshot.py --checkpoint=runs/demo --out=docs/serve_screenshot.png

Starts the server in-process, opens the page in Debian's headless Chromium (Playwright, as tests/serve), paints a
lake and a tree into the default sky-over-grass canvas, optionally uploads a style image, and saves the page once the
synthesis has updated.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", default="runs/demo")
  p.add_argument("--out", default="docs/serve_screenshot.png")
  p.add_argument("--style", default="", help="a style image to upload after painting (VAE models)")
  args = p.parse_args()

  from playwright.sync_api import sync_playwright

  import spade_jax
  from spade_jax.data import demo
  from spade_jax.serve.server import PainterServer

  srv = PainterServer(spade_jax.load(args.checkpoint), port=0, batch_size=1)
  srv.warm_up()
  srv.start()
  try:
    with sync_playwright() as pw:
      browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
      page = browser.new_page(viewport={"width": 1100, "height": 640})
      page.goto(srv.url)
      page.wait_for_selector('#output[data-version="1"]', state="attached", timeout=60_000)
      box = page.locator("#canvas").bounding_box()
      scale = box["width"] / srv.model.image_size[1]
      at = lambda x, y: (box["x"] + x * scale, box["y"] + y * scale)
      version = 1
      strokes = [(demo.MOUNTAIN, 8, [(x, 30 - abs(x - 20) // 2) for x in range(4, 38, 2)]),
                 (demo.WATER, 8, [(x, 50) for x in range(6, 60, 2)]),
                 (demo.TREE, 8, [(52, y) for y in range(24, 44, 2)])]
      for cls, size, points in strokes:
        page.click(f'#palette button[data-class="{cls}"]')
        page.select_option("#brush-size", str(size))
        page.mouse.move(*at(*points[0]))
        page.mouse.down()
        for pt in points[1:]:
          page.mouse.move(*at(*pt))
        page.mouse.up()
        version += 1
        page.wait_for_selector(f'#output[data-version="{version}"]', state="attached", timeout=60_000)
      if args.style:
        page.set_input_files("#style-file", files=[args.style])
        version += 1
        page.wait_for_selector(f'#output[data-version="{version}"]', state="attached", timeout=60_000)
      page.screenshot(path=args.out)
      browser.close()
  finally:
    srv.close()
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
