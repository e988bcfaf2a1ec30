"""Synthesis command: label maps (+ instance maps, + a style image) in, PNG images out, in batches.

  python -m spade_jax.synthesize --checkpoint=runs/coco_pretrained \
      --labels='datasets/coco_stuff/val_label/*.png' --instances=datasets/coco_stuff/val_inst --out=results/coco
  python -m spade_jax.synthesize --checkpoint=runs/vae --labels=my_label.png --palette=colors.json \
      --style=photo.jpg --samples=4 --seed=1 --out=results/vae

Outputs are `<stem>.png`, or `<stem>_s{k}.png` for k < --samples. Instance maps are matched by file stem in
--instances. Colour-coded (RGB) label PNGs need --palette: a JSON list of [r, g, b] per class id (or
{"<id>": [r, g, b] | "#rrggbb", ...}), or `model` for the checkpoint's data-set colours (spade_jax.colormap).
--style is one image for all label maps, or a folder with an image per label stem.
"""
from __future__ import annotations

import glob
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np

from spade_jax.errors import EXIT_USER_ERROR, ArgumentParser, UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_labels(spec: str) -> list[pathlib.Path]:
  """A file, a folder (its images) or a glob -> sorted image paths."""
  p = pathlib.Path(spec)
  if p.is_dir():
    files = [f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS]
  elif p.is_file():
    files = [p]
  else:
    files = [pathlib.Path(f) for f in glob.glob(spec, recursive=True)]
    files = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
  if not files:
    raise FileNotFoundError(f"--labels={spec}: no label images found (give a file, a folder or a glob)")
  return sorted(files)


def match_by_stem(files: Sequence[pathlib.Path], folder: str, what: str) -> list[pathlib.Path]:
  d = pathlib.Path(folder)
  if not d.is_dir():
    raise FileNotFoundError(f"--{what}={folder} is not a folder")
  index = {}
  for f in sorted(d.iterdir()):
    if f.suffix.lower() in IMAGE_EXTS:
      index.setdefault(f.stem, f)
  missing = [f.stem for f in files if f.stem not in index]
  if missing:
    raise FileNotFoundError(f"--{what}={folder}: no image for {len(missing)} label map(s) "
                            f"(matched by file stem): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
  return [index[f.stem] for f in files]


def _color(c, where):
  if isinstance(c, str):
    c = c.lstrip("#")
    if len(c) != 6:
      raise UserError(f"{where}: colour {c!r} is not #rrggbb")
    return [int(c[i:i + 2], 16) for i in (0, 2, 4)]
  if len(c) < 3:
    raise UserError(f"{where}: colour {c!r} is not [r, g, b]")
  return [int(x) for x in c[:3]]


def read_palette(path) -> np.ndarray:
  """colors.json -> int64 [n, 3]; ids a dict leaves out get an impossible colour (-1), so they never match."""
  data = json.loads(pathlib.Path(path).read_text())
  if isinstance(data, dict) and any(k in data for k in ("palette", "colors", "colours")):
    data = data.get("palette", data.get("colors", data.get("colours")))
  if isinstance(data, list):
    return np.array([_color(c, f"{path}[{i}]") for i, c in enumerate(data)], np.int64).reshape(-1, 3)
  if isinstance(data, dict):
    ids = {int(k): _color(v, f"{path}[{k}]") for k, v in data.items()}
    out = np.full((max(ids) + 1, 3), -1, np.int64)
    for i, c in ids.items():
      out[i] = c
    return out
  raise UserError(f"{path}: expected a JSON list of [r, g, b] (index = class id) or a dict id -> colour")


def _parser():
  p = ArgumentParser(prog="python -m spade_jax.synthesize", description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True, help="workdir, its checkpoints/ folder, or checkpoints/<step>")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--labels", required=True, help="label map file, folder or glob (index PNGs, or RGB with --palette)")
  p.add_argument("--instances", help="folder of instance maps, matched to the labels by file stem")
  p.add_argument("--palette", help="colors.json for colour-coded label PNGs, or 'model' for the data set's colours")
  p.add_argument("--style", help="style image (VAE models), or a folder with one per label stem")
  p.add_argument("--samples", type=int, default=1, help="outputs per label map (VAE models: different z)")
  p.add_argument("--seed", type=int, default=0, help="seed of the random z (VAE models)")
  p.add_argument("--sample_style", action="store_true",
                 help="with --style: sample z around the encoded style instead of using its mean")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--save_labels", action="store_true", help="also write <stem>_label.png (colourised label map)")
  return p


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
  args = _parser().parse_args(argv)
  from PIL import Image

  from spade_jax.inference import load

  if args.samples < 1 or args.batch_size < 1:
    raise UserError("--samples and --batch_size must be >= 1")
  labels = find_labels(args.labels)
  instances = match_by_stem(labels, args.instances, "instances") if args.instances else None
  style = None
  if args.style:
    style = (match_by_stem(labels, args.style, "style") if pathlib.Path(args.style).is_dir()
             else pathlib.Path(args.style))
    if not isinstance(style, list) and not style.is_file():
      raise FileNotFoundError(f"--style={args.style}: no such file")
  model = load(args.checkpoint, args.step)
  if style is not None and not model.use_vae:
    raise UserError(f"--style: {model} was trained without the VAE encoder; it takes no style image")
  if args.samples > 1 and not model.use_vae:
    raise UserError(f"--samples={args.samples}: {model} is not a VAE generator, so every sample would be the same")
  palette = None
  if args.palette:
    palette = model.palette if args.palette in ("model", "dataset") else read_palette(args.palette)
  if not model.no_instance and instances is None:
    print(f"note: {model.dataset} uses instance edges and no --instances were given: the label maps' class "
          "boundaries stand in for instance boundaries", file=sys.stderr)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  print(f"{model} from {model.source}: {len(labels)} label map(s) -> {out}", flush=True)

  written: list[pathlib.Path] = []
  bs, n, t0 = args.batch_size, len(labels), time.perf_counter()
  for start in range(0, n, bs):
    idx = list(range(start, min(start + bs, n)))
    pad = idx + [idx[-1]] * (bs - len(idx))  # a fixed batch shape: one compilation for the whole run
    batch_labels = []
    for i in pad:
      with Image.open(labels[i]) as im:
        im.load()
        if im.mode in ("RGB", "RGBA") and palette is None:
          raise UserError(f"{labels[i]} is a colour-coded (RGB) label image: pass --palette=colors.json, or "
                           "--palette=model for the data set's colours")
        batch_labels.append(im.copy())
    kw = {}
    if instances is not None:
      kw["instances"] = [instances[i] for i in pad]
    if style is not None:
      kw["style"] = [style[i] for i in pad] if isinstance(style, list) else style
    import warnings
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # the missing-instances note was printed once above
      images = model.synthesize(batch_labels, seed=args.seed, num_samples=args.samples, palette=palette,
                                sample_style=True if args.sample_style else None, **kw)
    for j, i in enumerate(idx):
      stem = labels[i].stem
      if args.samples == 1:
        targets = [(out / f"{stem}.png", images[j])]
      else:
        targets = [(out / f"{stem}_s{k}.png", images[j, k]) for k in range(args.samples)]
      for path, img in targets:
        Image.fromarray(img).save(path)
        written.append(path)
      if args.save_labels:
        Image.fromarray(model.colorize([batch_labels[j]], palette)[0]).save(out / f"{stem}_label.png")
    done = idx[-1] + 1
    rate = done * args.samples / (time.perf_counter() - t0)
    print(f"[{done}/{n}] {labels[idx[-1]].name} ... {rate:.2f} images/s", flush=True)
  print(f"wrote {len(written)} image(s) to {out}")
  return written


if __name__ == "__main__":
  try:
    main()
  except (UserError, FileNotFoundError) as e:  # a user's mistake: one line (anything else keeps its traceback)
    sys.stderr.write(f"error: {e}\n")
    sys.exit(EXIT_USER_ERROR)
