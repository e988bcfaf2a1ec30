"""A procedural "landscapes" data set in the custom-folder layout, for demos and end-to-end tests.

GauGAN's landscape data was never released (#9). This generator gives a tiny stand-in that trains in minutes
on a CPU: label maps of layered regions (sky with clouds, a mountain silhouette, a water/sand/grass band near
the horizon, a few trees), and photos rendered from them in a random global style (day / sunset / night) with
gradients and texture. The style is not a function of the label map, so multimodal and style-guided (VAE)
synthesis have something to learn. Deterministic from the seed; each sample depends only on (seed, split, i).

    python -m spade_jax.data.demo --out=/tmp/landscapes [--num_train=200 --num_val=20 --size=64 --seed=0]

writes ``{out}/{train,val}/images/*.png`` (RGB), ``{out}/{train,val}/labels/*.png`` (mode 'L' ids 0..6),
``{out}/{train,val}/styles.json`` (file stem -> 'day' / 'sunset' / 'night': what the style scores of the evaluation
check a synthesis against) and a marker file (written first: the generator never touches a folder it did not
create); a second call with the same arguments is a no-op. Use with ``dataset='custom'``, ``root=out``,
``label_nc=7``, ``no_instance=True``, ``contain_dontcare_label=False``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from spade_jax.data.errors import DataError

CLASS_NAMES = ("sky", "cloud", "mountain", "water", "sand", "grass", "tree")
SKY, CLOUD, MOUNTAIN, WATER, SAND, GRASS, TREE = range(len(CLASS_NAMES))
NUM_CLASSES = len(CLASS_NAMES)
# Palette for visualising label maps (index = class id).
COLORS = np.array([(135, 206, 235), (255, 255, 255), (128, 110, 100), (30, 90, 200), (230, 210, 150),
                   (90, 190, 60), (20, 100, 40)], dtype=np.uint8)

# Per style and class: (colour at the top of the class's band, colour at its bottom).
STYLES = ("day", "sunset", "night")
_PALETTES = {
    "day": [((70, 130, 220), (175, 210, 240)), ((250, 250, 252), (205, 212, 225)), ((120, 125, 145), (75, 90, 85)),
            ((90, 140, 195), (25, 70, 130)), ((230, 210, 155), (205, 180, 120)), ((135, 190, 75), (55, 125, 35)),
            ((45, 105, 45), (25, 70, 25))],
    "sunset": [((55, 45, 115), (250, 150, 80)), ((250, 175, 140), (195, 105, 120)), ((95, 65, 95), (55, 38, 58)),
               ((230, 140, 95), (75, 45, 85)), ((215, 150, 110), (165, 105, 75)), ((115, 110, 50), (55, 65, 30)),
               ((55, 45, 35), (28, 22, 18))],
    "night": [((4, 8, 28), (30, 45, 95)), ((75, 80, 105), (45, 50, 72)), ((28, 32, 48), (14, 18, 28)),
              ((35, 45, 85), (5, 10, 30)), ((72, 72, 82), (50, 50, 60)), ((22, 48, 32), (10, 28, 18)),
              ((12, 26, 16), (5, 14, 8))],
}
_TEXTURE = np.array([3, 6, 10, 6, 6, 12, 14], np.float32)  # low-frequency texture amplitude per class
_MARKER = ".spade_demo_complete.json"
STYLES_FILE = "styles.json"  # per split, beside images/ and labels/ (outside them: the custom layout is unchanged)
_VERSION = 2


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  c = (np.arange(size, dtype=np.float32) + 0.5) / size
  return c[:, None], c[None, :]  # y (rows, top=0), x (cols)


def _smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
  """Bilinearly upsampled Gaussian noise (cells = (rows, cols)), roughly unit variance."""
  g = rng.standard_normal(cells).astype(np.float32)
  return np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR))


def label_map(rng: np.random.Generator, size: int = 64) -> np.ndarray:
  """One uint8 size x size label map of layered landscape regions."""
  y, x = _grid(size)
  horizon = rng.uniform(0.42, 0.62)
  lab = np.full((size, size), SKY, np.uint8)

  for _ in range(rng.integers(0, 4)):  # clouds: a few overlapping flat ellipses ("puffs")
    cx, cy = rng.uniform(-0.05, 1.05), rng.uniform(0.06, max(0.07, horizon - 0.2))
    rx = rng.uniform(0.08, 0.2)
    for dx in (-0.6, 0.0, 0.6):
      px, py, r = cx + dx * rx, cy + rng.uniform(-0.3, 0.1) * rx, rx * rng.uniform(0.55, 0.9)
      lab[((x - px) / r) ** 2 + ((y - py) / (0.45 * r)) ** 2 < 1.0] = CLOUD

  if rng.random() < 0.85:  # mountain silhouette: a sum of random bumps above the horizon
    ridge = np.zeros_like(x)
    for _ in range(rng.integers(2, 5)):
      mu, width = rng.uniform(-0.1, 1.1), rng.uniform(0.08, 0.3)
      ridge = ridge + rng.uniform(0.3, 1.0) * np.exp(-0.5 * ((x - mu) / width) ** 2)
    ridge = ridge / max(ridge.max(), 1e-6) * rng.uniform(0.12, 0.32)
    ridge = ridge + 0.01 * np.sin(x * rng.uniform(20, 40) + rng.uniform(0, 6))
    lab[(y >= horizon - ridge) & (y < horizon)] = MOUNTAIN

  # ground bands below the horizon, with gently wavy boundaries
  def wavy(level):
    return level + 0.015 * np.sin(x * rng.uniform(6, 14) + rng.uniform(0, 6))

  top = np.full_like(x, horizon)
  lab[y >= top] = GRASS
  if rng.random() < 0.65:
    shore = wavy(horizon + rng.uniform(0.08, 0.25))
    lab[(y >= top) & (y < shore)] = WATER
    top = shore
  if rng.random() < 0.6:
    dune = wavy(top.mean() + rng.uniform(0.03, 0.09))
    lab[(y >= top) & (y < dune)] = SAND
    top = np.maximum(top, dune)

  if rng.random() < 0.75 and top.mean() < 0.93:  # trees standing on the grass, bigger when closer
    for _ in range(rng.integers(1, 5)):
      base_y = rng.uniform(top.mean() + 0.02, 1.0)
      tx = rng.uniform(0.0, 1.0)
      scale = 0.08 + 0.25 * (base_y - horizon) / (1.0 - horizon)
      trunk = (np.abs(x - tx) < 0.05 * scale + 0.5 / size) & (y <= base_y) & (y > base_y - 0.35 * scale)
      lab[trunk] = TREE
      crown_y = base_y - 0.35 * scale
      if rng.random() < 0.5:  # conifer: a triangle
        h = 1.2 * scale
        lab[(y <= crown_y) & (y >= crown_y - h) & (np.abs(x - tx) <= 0.35 * scale * (y - (crown_y - h)) / h)] = TREE
      else:  # broadleaf: an ellipse
        r = 0.45 * scale
        lab[((x - tx) / r) ** 2 + ((y - crown_y + 0.6 * r) / (0.9 * r)) ** 2 < 1.0] = TREE
  return lab


def render(lab: np.ndarray, rng: np.random.Generator, style: str | None = None) -> np.ndarray:
  """An RGB uint8 image for label map `lab` in a random (or given) global style."""
  size = lab.shape[0]
  style = style or STYLES[rng.integers(len(STYLES))]
  y, x = _grid(size)
  pal = np.asarray(_PALETTES[style], np.float32)                      # (C, 2, 3)
  pal = pal * rng.uniform(0.9, 1.1) + rng.normal(0, 6, (1, 1, 3)) + rng.normal(0, 5, (NUM_CLASSES, 1, 3))
  ground_rows = np.flatnonzero(np.isin(lab, (WATER, SAND, GRASS)).any(axis=1))
  horizon = float(np.clip(ground_rows[0] / size if ground_rows.size else 0.55, 0.2, 0.9))
  t_sky = np.clip(y / horizon, 0, 1)
  t_ground = np.clip((y - horizon) / (1 - horizon), 0, 1)
  t = np.where(np.isin(lab, (SKY, CLOUD, MOUNTAIN)), t_sky, t_ground)[..., None]
  img = pal[lab, 0] * (1 - t) + pal[lab, 1] * t                      # vertical gradient per class

  tex = _smooth_noise(rng, size, (8, 8)) * _TEXTURE[lab]
  streaks = _smooth_noise(rng, size, (max(2, size // 3), 3)) * 8.0     # horizontal ripples on water
  tex = tex + np.where(lab == WATER, streaks, 0.0)
  img = img + tex[..., None]
  if style in ("day", "sunset"):  # a glow in the sky around the (off-frame or low) sun
    sx, sy = rng.uniform(0.1, 0.9), horizon * rng.uniform(0.4, 1.0)
    glow = np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / 0.05)[..., None]
    colour = np.array([60, 50, 20] if style == "day" else [90, 60, 10], np.float32)
    img = img + np.where(np.isin(lab, (SKY, CLOUD))[..., None], glow * colour, 0.0)
  else:  # stars
    stars = (rng.random((size, size)) < 0.015) & (lab == SKY)
    img[stars] = rng.uniform(150, 255, (int(stars.sum()), 1))
  img = img + rng.normal(0, 2.5, img.shape)                            # mild sensor noise
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sample(seed: int, split: str, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, str]:
  """(label uint8 HxW, image uint8 HxWx3, style) for one sample; depends only on its arguments."""
  rng = np.random.default_rng([seed, ("train", "val").index(split), index])
  lab = label_map(rng, size)
  style = STYLES[rng.integers(len(STYLES))]
  return lab, render(lab, rng, style), style


def read_marker(root) -> dict | None:
  """{'complete': bool, 'params': {...}} of the generator's marker in `root`; None when there is none (or it is
  unreadable). A marker of version 2 and before (the params alone) was written when its run was complete."""
  try:
    m = json.loads((Path(root) / _MARKER).read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(m, dict):
    return None
  return m if isinstance(m.get("params"), dict) else {"complete": True, "params": m}


def _ours(params: dict) -> list[Path]:
  """The files (relative to the root) that a run of the generator with `params` writes."""
  files = []
  for split, n in (("train", params["num_train"]), ("val", params["num_val"])):
    files.append(Path(split) / STYLES_FILE)
    for i in range(n):
      files += [Path(split) / "images" / f"{i:05d}.png", Path(split) / "labels" / f"{i:05d}.png"]
  return files


def generate(out_dir, num_train: int = 200, num_val: int = 20, size: int = 64, seed: int = 0) -> Path:
  """Writes the data set (see module docstring) unless a marker for the same arguments says it is complete.

  Never touches a user's files: a folder that holds anything and no marker of ours is refused, the marker is
  written before the first image (so an interrupted run is recognised as ours), and a rewrite deletes only the
  files that the earlier run recorded in its marker wrote."""
  out = Path(out_dir)
  params = {"num_train": int(num_train), "num_val": int(num_val), "size": int(size), "seed": int(seed),
            "version": _VERSION, "classes": list(CLASS_NAMES)}
  marker = out / _MARKER
  if out.exists() and not out.is_dir():
    raise DataError(f"config.data.root={out} is a file; the demo generator writes a data set into a folder there. "
                    "Fix: point config.data.root at a new or empty folder.")
  previous = read_marker(out)
  if marker.exists():
    if previous and previous["complete"] and previous["params"] == params:
      return out
  elif out.exists() and any(out.iterdir()):
    example = next(p for p in sorted(out.rglob("*")) if p.is_file() or not any(p.iterdir()))
    raise DataError(f"config.data.root={out} holds files the demo generator did not write (e.g. {example}); it "
                    "writes its own data set and would overwrite them. Fix: point config.data.root at a new or "
                    "empty folder (SPADE_DEMO_DATA sets the demo's default), or train on your own images with "
                    "configs/custom.py.")
  if previous:
    try:
      for rel in _ours(previous["params"]):  # remove our own files of an earlier, different (or interrupted) run
        (out / rel).unlink(missing_ok=True)
    except (KeyError, TypeError, ValueError):
      pass
  out.mkdir(parents=True, exist_ok=True)
  marker.write_text(json.dumps({"complete": False, "params": params}))  # ours from the first file on
  for split, n in (("train", num_train), ("val", num_val)):
    img_dir, lab_dir = out / split / "images", out / split / "labels"
    for d in (img_dir, lab_dir):
      d.mkdir(parents=True, exist_ok=True)
    styles = {}
    for i in range(n):
      lab, img, styles[f"{i:05d}"] = sample(seed, split, i, size)
      Image.fromarray(lab).save(lab_dir / f"{i:05d}.png", compress_level=1)
      Image.fromarray(img).save(img_dir / f"{i:05d}.png", compress_level=1)
    (out / split / STYLES_FILE).write_text(json.dumps(styles, indent=0) + "\n")
  marker.write_text(json.dumps({"complete": True, "params": params}))
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--num_train", type=int, default=200)
  p.add_argument("--num_val", type=int, default=20)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  out = generate(a.out, a.num_train, a.num_val, a.size, a.seed)
  print(f"landscapes data set in {out} (dataset=custom, root={out}, label_nc={NUM_CLASSES}, no_instance=True)")


if __name__ == "__main__":
  main()
