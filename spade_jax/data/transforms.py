"""PIL-exact geometry and tensor conversion of the official SPADE data pipeline (spec §11).

Image, label and instance map get the same crop position and flip (`get_params` is drawn once per sample);
images resample with BICUBIC, labels and instances with NEAREST, exactly as the official code, so that a
converted checkpoint sees the same inputs as in PyTorch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
from PIL import Image

from spade_jax.errors import UserError

PREPROCESS_MODES = ("resize_and_crop", "scale_width_and_crop", "scale_shortside_and_crop", "fixed", "none",
                    "resize", "crop", "scale_width", "scale_shortside")


@dataclasses.dataclass(frozen=True)
class TransformOptions:
  """The plain values of ``config.data`` that decoding needs (picklable, hashable, no ConfigDict)."""
  preprocess: str = "resize_and_crop"
  load_size: int = 286
  crop_size: int = 256
  aspect_ratio: float = 1.0
  flip: bool = True                # train and not no_flip
  label_nc: int = 182
  contain_dontcare_label: bool = False
  no_instance: bool = False
  on_bad_sample: str = "error"

  @classmethod
  def from_config(cls, data_cfg, train: bool) -> TransformOptions:
    if data_cfg.preprocess not in PREPROCESS_MODES:
      raise UserError(f"config.data.preprocess={data_cfg.preprocess!r}; expected one of {PREPROCESS_MODES}")
    return cls(preprocess=data_cfg.preprocess, load_size=int(data_cfg.load_size),
               crop_size=int(data_cfg.crop_size), aspect_ratio=float(data_cfg.aspect_ratio),
               flip=bool(train and not data_cfg.no_flip), label_nc=int(data_cfg.label_nc),
               contain_dontcare_label=bool(data_cfg.contain_dontcare_label),
               no_instance=bool(data_cfg.no_instance), on_bad_sample=data_cfg.on_bad_sample)

  @property
  def num_label_slots(self) -> int:
    """Valid label ids are 0 .. num_label_slots-1 (label_nc, plus the dontcare slot if present)."""
    return self.label_nc + (1 if self.contain_dontcare_label else 0)


class Params(NamedTuple):
  crop_pos: tuple[int, int]  # (x, y) of the crop's top-left corner
  flip: bool


def scaled_size(preprocess: str, load_size: int, size: tuple[int, int]) -> tuple[int, int]:
  """(new_w, new_h) that get_params assumes before cropping (the crop range depends on it)."""
  w, h = size
  if preprocess == "resize_and_crop":
    return load_size, load_size
  if preprocess == "scale_width_and_crop":
    return load_size, load_size * h // w
  if preprocess == "scale_shortside_and_crop":
    short, long = min(w, h), max(w, h)
    long = int(load_size * long / short)
    return (load_size, long) if w <= h else (long, load_size)
  return w, h


def get_params(opts: TransformOptions, size: tuple[int, int], rng: np.random.Generator) -> Params:
  """Random crop corner in [0, max(0, new - crop)] and a fair-coin flip, shared by image/label/instance."""
  new_w, new_h = scaled_size(opts.preprocess, opts.load_size, size)
  x = int(rng.integers(0, max(0, new_w - opts.crop_size) + 1))
  y = int(rng.integers(0, max(0, new_h - opts.crop_size) + 1))
  return Params((x, y), bool(rng.random() > 0.5))


def _scale_width(img: Image.Image, target: int, method) -> Image.Image:
  ow, oh = img.size
  if ow == target:
    return img
  return img.resize((target, int(target * oh / ow)), method)


def _scale_shortside(img: Image.Image, target: int, method) -> Image.Image:
  ow, oh = img.size
  short, long = min(ow, oh), max(ow, oh)
  if short == target:
    return img
  long = int(target * long / short)
  return img.resize((target, long) if ow <= oh else (long, target), method)


def _crop(img: Image.Image, pos: tuple[int, int], size: int) -> Image.Image:
  ow, oh = img.size
  if ow > size or oh > size:  # PIL pads with zeros where the box leaves the image
    x, y = pos
    return img.crop((x, y, x + size, y + size))
  return img


def _round_to_multiple(img: Image.Image, base: int, method) -> Image.Image:
  ow, oh = img.size  # sides under base/2 would round to 0 (a PIL error in the official code): keep >= base
  w, h = max(base, int(round(ow / base) * base)), max(base, int(round(oh / base) * base))
  if (w, h) == (ow, oh):
    return img
  return img.resize((w, h), method)


def fixed_size(opts: TransformOptions) -> tuple[int, int]:
  """(w, h) of the 'fixed' mode: width crop_size, height round(crop_size / aspect_ratio)."""
  return opts.crop_size, round(opts.crop_size / opts.aspect_ratio)


def apply(img: Image.Image, opts: TransformOptions, params: Params, method) -> Image.Image:
  """Resize / crop / flip one PIL image as the official get_transform does for `opts.preprocess`."""
  mode = opts.preprocess
  if "resize" in mode:
    img = img.resize((opts.load_size, opts.load_size), method)
  elif "scale_width" in mode:
    img = _scale_width(img, opts.load_size, method)
  elif "scale_shortside" in mode:
    img = _scale_shortside(img, opts.load_size, method)
  if "crop" in mode:
    img = _crop(img, params.crop_pos, opts.crop_size)
  if mode == "none":
    img = _round_to_multiple(img, 32, method)
  if mode == "fixed":
    img = img.resize(fixed_size(opts), method)
  if opts.flip and params.flip:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return img


def image_to_array(img: Image.Image) -> np.ndarray:
  """RGB PIL -> float32 HxWx3 in [-1, 1]; equals ToTensor then Normalize(0.5, 0.5) bit for bit."""
  x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
  return x * np.float32(2.0) - np.float32(1.0)


def label_to_array(img: Image.Image, label_nc: int) -> np.ndarray:
  """Index map -> int32 HxW with 255 (unknown) moved to the dontcare slot `label_nc`."""
  a = np.asarray(img).astype(np.int32)
  a[a == 255] = label_nc
  return a


def instance_to_array(img: Image.Image) -> np.ndarray:
  """Instance map -> int32 HxW of raw values ('L' ×255/255 round-trips exactly; 16/32-bit are raw)."""
  return np.asarray(img).astype(np.int32)
