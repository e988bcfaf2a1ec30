"""Images for people: generator output -> uint8, label maps -> colours, sample grids.

The one place these conversions live, below training, evaluation and inference, so that a PNG written by any of them
is the same bytes. numpy only (the colours come from spade_jax.colormap).
"""
from __future__ import annotations

import numpy as np

from spade_jax import colormap

__all__ = ["to_uint8", "image_grid", "sample_grid", "colorize_labels"]


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8, truncating as the official tensor2im: clip((x+1)/2*255, 0, 255).astype(uint8), in
  float32 math so that PNGs match the official ones bit for bit."""
  x = np.asarray(images, np.float32)
  return np.clip((x + np.float32(1)) / np.float32(2) * np.float32(255), 0, 255).astype(np.uint8)




def image_grid(rows, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """rows: list of uint8 [N, H, W, 3]; each row's images side by side, rows stacked, `pad` pixels between.
  Rows with fewer images are filled with `pad_value` on the right."""
  rows = [np.asarray(r) for r in rows]
  h, w, c = rows[0].shape[1:]
  if any(r.shape[1:] != (h, w, c) for r in rows):
    raise ValueError(f"all images must share one [H, W, C]; got {[r.shape for r in rows]}")
  ncol = max(len(r) for r in rows)
  grid = np.full((len(rows) * (h + pad) - pad, ncol * (w + pad) - pad, c), pad_value, np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      grid[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = img
  return grid


def sample_grid(label_rgb, fake, real=None, pad: int = 2) -> np.ndarray:
  """One row per sample: label colours | synthesis | real (real optional). fake/real may be uint8 or [-1, 1]
  floats (converted with `to_uint8`)."""
  cols = [np.asarray(label_rgb)] + [np.asarray(x) for x in (fake, real) if x is not None]
  cols = [x if x.dtype == np.uint8 else to_uint8(x) for x in cols]
  return image_grid([np.stack([c[i] for c in cols]) for i in range(len(cols[0]))], pad=pad)


def colorize_labels(labels, data_cfg) -> np.ndarray:
  """int label maps [..., H, W] -> uint8 [..., H, W, 3] in the colours of a config's data set (or the demo's)."""
  return colormap.colorize(np.asarray(labels), colormap.for_data(data_cfg)[1])
