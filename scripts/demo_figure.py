"""The README's demo figure: style-guided and multimodal synthesis of a trained demo checkpoint.

  .venv/bin/python scripts/demo_figure.py --checkpoint=runs/demo --data=data/demo --out=docs/demo_styles.png

Top row: one validation photo of each style (day, sunset, night; the first of each in val/styles.json). Below, one
row per validation label map: the map, its synthesis with the style code of each of the three photos (z = the
encoder's mean), then random codes (seed 0, samples 0..k-1, as the painter's re-roll). Each cell is 64x64 shown at
`--scale`.
"""
import argparse
import json
import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", default="runs/demo")
  p.add_argument("--data", default="data/demo", help="the demo data set (its val split)")
  p.add_argument("--out", default="docs/demo_styles.png")
  p.add_argument("--labels", default="3,5,10,12", help="validation label maps (indices), one row each")
  p.add_argument("--samples", type=int, default=4, help="random codes per row")
  p.add_argument("--scale", type=int, default=2)
  p.add_argument("--gap", type=int, default=4)
  args = p.parse_args()

  import spade_jax
  from spade_jax.data import demo

  model = spade_jax.load(args.checkpoint)
  val = pathlib.Path(args.data) / "val"
  styles = json.loads((val / demo.STYLES_FILE).read_text())
  photos = [Image.open(val / "images" / f"{min(k for k, v in styles.items() if v == s)}.png").convert("RGB")
            for s in demo.STYLES]
  labels = [np.asarray(Image.open(val / "labels" / f"{int(i):05d}.png")) for i in args.labels.split(",")]
  h, w = model.image_size
  photos = np.stack([np.asarray(im.resize((w, h), Image.Resampling.BICUBIC)) for im in photos])
  guided = [model.synthesize(labels, style=ph) for ph in photos]                      # 3 x (R, H, W, 3)
  rnd = model.synthesize(labels, seed=0, num_samples=args.samples)                    # (R, S, H, W, 3)
  colours = model.colorize(labels)

  blank = np.full((h, w, 3), 255, np.uint8)
  rows = [[blank, *photos] + [blank] * args.samples]
  for r in range(len(labels)):
    rows.append([colours[r]] + [g[r] for g in guided] + list(rnd[r]))
  g, s = args.gap, args.scale
  ncol = len(rows[0])
  canvas = np.full((len(rows) * (h + g) - g + g, ncol * (w + g) - g, 3), 255, np.uint8)
  for i, row in enumerate(rows):
    y = i * (h + g) + (g if i else 0)  # an extra gap under the photo row
    for j, cell in enumerate(row):
      canvas[y:y + h, j * (w + g):j * (w + g) + w] = cell
  img = Image.fromarray(canvas)
  img = img.resize((img.width * s, img.height * s), Image.Resampling.NEAREST)
  img.save(args.out, optimize=True)
  print(f"wrote {args.out} ({img.width}x{img.height}); photos {[str(p) for p in demo.STYLES]}")


if __name__ == "__main__":
  main()
