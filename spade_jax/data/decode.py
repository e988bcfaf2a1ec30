"""Reads one source record into a training sample, validating it first.

Validation turns the official code's late, cryptic failures (CUDA scatter asserts for label ids >= nc,
silent garbage for RGB colour masks, shape errors for mismatched sizes) into a `DataError` naming the file
and the fix, before any transform runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from spade_jax.data import transforms as T
from spade_jax.data.errors import SKIP_HINT, DataError, handle_bad

INDEX_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "1")


def _open(src: Any, kind: str, where: str) -> Image.Image:
  """A fully decoded PIL image from a path or a numpy array (tfds); corrupt files become DataErrors."""
  if isinstance(src, np.ndarray):
    a = src[..., 0] if src.ndim == 3 and src.shape[-1] == 1 else src
    try:
      return Image.fromarray(a.astype(np.int32) if a.ndim == 2 and a.dtype != np.uint8 else a)
    except (TypeError, ValueError) as e:
      raise DataError(f"cannot convert {kind} array of shape {src.shape} and dtype {src.dtype} from {where} "
                      f"to an image: {e}.") from e
  try:
    img = Image.open(src)
    img.load()
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, … for broken files
    raise DataError(f"cannot read {kind} file {src}: {type(e).__name__}: {e}. Fix: re-create or delete the "
                    f"file, {SKIP_HINT}.") from e
  return img


def _index_map(img: Image.Image, kind: str, where: str) -> Image.Image:
  """Checks that a label/instance map is single-channel; 16-bit maps become mode 'I' (PIL resizes those)."""
  if img.mode not in INDEX_MODES:
    raise DataError(f'{kind} map {where} has PIL mode {img.mode!r} ({len(img.getbands())} channels), but an '
                    f'index map (one integer {"class id" if kind == "label" else "instance id"} per pixel, '
                    "single-channel 'L'/'P'/16-bit PNG) is expected. Fix: convert colour masks to ids and save "
                    f'them as 8-bit grayscale or palette PNGs, {SKIP_HINT}.')
  if img.mode.startswith("I;16"):
    return img.convert("I")
  if img.mode == "1":
    return img.convert("L")
  return img


def check_label_ids(label: np.ndarray, where: str, opts: T.TransformOptions) -> None:
  """Every id, after 255 -> label_nc, must be a valid one-hot slot (< label_nc + dontcare)."""
  ids = np.flatnonzero(np.bincount(label.ravel())) if label.dtype == np.uint8 else np.unique(label)
  bad = ids[(ids < 0) | ((ids >= opts.num_label_slots) & (ids != 255))]
  if bad.size:
    if opts.contain_dontcare_label:
      msg = (f"label id {int(bad[-1])} in {where} is > label_nc={opts.label_nc} (valid ids are 0..{opts.label_nc} "
             f"with contain_dontcare_label=True, and 255 which maps to {opts.label_nc})")
    else:
      msg = f"label id {int(bad[-1])} in {where} is >= label_nc={opts.label_nc}"
    raise DataError(f"{msg}; set config.data.label_nc or contain_dontcare_label, {SKIP_HINT}.")
  if 255 in ids and opts.label_nc >= opts.num_label_slots:
    raise DataError(f"label id 255 (unknown) in {where} maps to slot label_nc={opts.label_nc}, which needs "
                    f"contain_dontcare_label=True; set config.data.label_nc or contain_dontcare_label, {SKIP_HINT}.")


def load_sample(record: dict[str, Any], opts: T.TransformOptions, rng: np.random.Generator) -> dict[str, Any]:
  """Decodes, validates and transforms one record; raises DataError naming the file on bad input."""
  where = record.get("where")
  img_where = where or record["image"]
  label_where = where or record["label"]
  image = _open(record["image"], "image", img_where).convert("RGB")
  label = _index_map(_open(record["label"], "label", label_where), "label", label_where)
  if label.size != image.size:
    raise DataError(f"label map {label_where} is {label.size[0]}x{label.size[1]} (WxH) but its image {img_where} "
                    f"is {image.size[0]}x{image.size[1]}. Fix: regenerate the label map at the image size, "
                    f"{SKIP_HINT}.")
  check_label_ids(np.asarray(label), label_where, opts)
  instance = None
  if not opts.no_instance:
    if record.get("instance") is None:
      raise DataError(f"no instance map for {img_where}. Fix: set config.data.no_instance=True or provide the "
                      "instance maps.")
    inst_where = where or record["instance"]
    instance = _index_map(_open(record["instance"], "instance", inst_where), "instance", inst_where)
    if instance.size != image.size:
      raise DataError(f"instance map {inst_where} is {instance.size[0]}x{instance.size[1]} (WxH) but its image "
                      f"{img_where} is {image.size[0]}x{image.size[1]}. Fix: regenerate it at the image size, "
                      f"{SKIP_HINT}.")

  params = T.get_params(opts, label.size, rng)
  sample = {
      "image": T.image_to_array(T.apply(image, opts, params, Image.Resampling.BICUBIC)),
      "label": T.label_to_array(T.apply(label, opts, params, Image.Resampling.NEAREST), opts.label_nc),
  }
  if instance is not None:
    sample["instance"] = T.instance_to_array(T.apply(instance, opts, params, Image.Resampling.NEAREST))
  sample["index"] = int(record["index"])
  return sample


class LoadSample:
  """grain RandomMap-style callable: record -> sample, or None (dropped) for bad samples in skip mode."""

  def __init__(self, opts: T.TransformOptions):
    self.opts = opts

  def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    try:
      return load_sample(record, self.opts, rng)
    except DataError as e:
      handle_bad(e, "bad sample", self.opts.on_bad_sample)
      return None
