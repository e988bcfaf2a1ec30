"""Transforms: shared crop/flip, each preprocess mode's size and PIL-exactness, tensor conversion."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spade_jax.data import transforms as T
from spade_jax.data.decode import load_sample

from .util import make_cfg, rgb, save

W, H = 50, 37
BICUBIC, NEAREST = Image.Resampling.BICUBIC, Image.Resampling.NEAREST


def _coord_record(tmp_path, w=W, h=H, label_nc=7):
  """Image pixels encode their coordinates (R=x, G=y); instance = 256*y + x (16-bit); label = (x+y) % nc."""
  y, x = np.mgrid[:h, :w]
  save(tmp_path / "img.png", np.stack([x, y, np.full_like(x, 77)], -1).astype(np.uint8))
  save(tmp_path / "lab.png", ((x + y) % label_nc).astype(np.uint8))
  save(tmp_path / "inst.png", (256 * y + x).astype(np.uint16))
  return {"image": str(tmp_path / "img.png"), "label": str(tmp_path / "lab.png"),
          "instance": str(tmp_path / "inst.png"), "index": 0}


def _opts(train=True, **kw):
  return T.TransformOptions.from_config(make_cfg(**{**dict(no_instance=False), **kw}), train=train)


def test_crop_and_flip_are_shared(tmp_path):
  rec = _coord_record(tmp_path)
  opts = _opts(preprocess="crop", crop_size=24)        # no resampling: every pixel keeps its coordinates
  flips, corners = set(), set()
  for seed in range(12):
    s = load_sample(rec, opts, np.random.default_rng(seed))
    params = T.get_params(opts, (W, H), np.random.default_rng(seed))
    img = np.rint((s["image"] + 1) / 2 * 255).astype(np.int32)
    xs, ys = img[..., 0], img[..., 1]
    assert (img[..., 2] == 77).all()
    np.testing.assert_array_equal(s["instance"], 256 * ys + xs)
    np.testing.assert_array_equal(s["label"], (xs + ys) % 7)
    x0, y0 = params.crop_pos
    expected_x = np.arange(x0, x0 + 24)[::-1] if params.flip else np.arange(x0, x0 + 24)
    np.testing.assert_array_equal(xs[0], expected_x)
    np.testing.assert_array_equal(ys[:, 0], np.arange(y0, y0 + 24))
    flips.add(params.flip)
    corners.add(params.crop_pos)
  assert flips == {True, False} and len(corners) > 3


def test_no_flip_in_eval_or_with_no_flip(tmp_path):
  rec = _coord_record(tmp_path)
  for opts in (_opts(train=False, preprocess="crop", crop_size=24), _opts(preprocess="crop", crop_size=24,
                                                                           no_flip=True)):
    for seed in range(6):
      s = load_sample(rec, opts, np.random.default_rng(seed))
      xs = np.rint((s["image"][0, :, 0] + 1) / 2 * 255)
      assert (np.diff(xs) == 1).all()


def test_resized_label_and_instance_stay_aligned(tmp_path):
  rec = _coord_record(tmp_path)
  for mode in ("resize_and_crop", "scale_width_and_crop", "fixed", "none"):
    s = load_sample(rec, _opts(preprocess=mode, load_size=40, crop_size=32, aspect_ratio=2.0),
                    np.random.default_rng(5))
    inst = s["instance"]
    np.testing.assert_array_equal(s["label"], (inst % 256 + inst // 256) % 7)


# (mode, expected (w, h)) for a 50x37 input, load 40, crop 32, aspect 2
MODES = [("resize_and_crop", (32, 32)), ("scale_width_and_crop", (32, 32)), ("scale_shortside_and_crop", (32, 32)),
         ("fixed", (32, 16)), ("none", (64, 32)), ("resize", (40, 40)), ("crop", (32, 32)),
         ("scale_width", (40, 29)), ("scale_shortside", (54, 40))]


def _direct_pil(img, mode, params, method, train):
  """The transform written out by hand for each mode (independent of transforms.apply's dispatch)."""
  x, y = params.crop_pos
  box = (x, y, x + 32, y + 32)
  out = {
      "resize_and_crop": lambda: img.resize((40, 40), method).crop(box),
      "scale_width_and_crop": lambda: img.resize((40, int(40 * 37 / 50)), method).crop(box),
      "scale_shortside_and_crop": lambda: img.resize((int(40 * 50 / 37), 40), method).crop(box),
      "fixed": lambda: img.resize((32, 16), method),
      "none": lambda: img.resize((64, 32), method),
      "resize": lambda: img.resize((40, 40), method),
      "crop": lambda: img.crop(box),
      "scale_width": lambda: img.resize((40, 29), method),
      "scale_shortside": lambda: img.resize((54, 40), method),
  }[mode]()
  return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if train and params.flip else out


@pytest.mark.parametrize("mode,size", MODES)
def test_preprocess_modes_match_pil(tmp_path, mode, size):
  rng = np.random.default_rng(0)
  image = rgb(rng, H, W)
  label = rng.integers(0, 7, (H, W), dtype=np.uint8)
  label[0, 0] = 255
  save(tmp_path / "i.png", image)
  save(tmp_path / "l.png", label)
  rec = {"image": str(tmp_path / "i.png"), "label": str(tmp_path / "l.png"), "instance": None, "index": 3}
  for seed in (1, 2):
    opts = _opts(preprocess=mode, load_size=40, crop_size=32, aspect_ratio=2.0, no_instance=True,
                 contain_dontcare_label=True)
    s = load_sample(rec, opts, np.random.default_rng(seed))
    params = T.get_params(opts, (W, H), np.random.default_rng(seed))
    assert s["image"].shape == (size[1], size[0], 3) and s["label"].shape == (size[1], size[0])
    assert s["index"] == 3 and "instance" not in s
    exp_img = np.asarray(_direct_pil(Image.fromarray(image), mode, params, BICUBIC, True), np.float32)
    np.testing.assert_array_equal(s["image"], (exp_img / np.float32(255) - np.float32(0.5)) / np.float32(0.5))
    exp_lab = np.asarray(_direct_pil(Image.fromarray(label), mode, params, NEAREST, True)).astype(np.int32)
    exp_lab[exp_lab == 255] = 7
    np.testing.assert_array_equal(s["label"], exp_lab)


def test_get_params_ranges():
  opts = _opts(preprocess="scale_width_and_crop", load_size=40, crop_size=32)
  xs, ys = zip(*(T.get_params(opts, (W, H), np.random.default_rng(s)).crop_pos for s in range(200)))
  assert set(xs) == set(range(0, 9)) and set(ys) == {0}                   # new size 40 x 29
  assert T.scaled_size("scale_shortside_and_crop", 40, (W, H)) == (54, 40)
  assert T.scaled_size("scale_shortside_and_crop", 40, (H, W)) == (40, 54)
  assert T.scaled_size("fixed", 40, (W, H)) == (W, H)


def test_image_normalisation_is_exact():
  x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  out = T.image_to_array(Image.fromarray(x))
  assert out.dtype == np.float32 and out.min() == -1.0 and out.max() == 1.0
  np.testing.assert_array_equal(out, (x.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5))
