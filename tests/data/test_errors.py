"""Bad inputs: each raises DataError naming the file and the fix; skip mode drops and counts them."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from spade_jax.data import DataError, build_source, make_dataset, skip_counter
from spade_jax.data.decode import load_sample
from spade_jax.data.transforms import TransformOptions

from .util import make_cfg, rgb, save, write_custom


@pytest.fixture(autouse=True)
def _reset_counter():
  skip_counter.reset()
  yield
  skip_counter.reset()


def _load(cfg, i=0, split="train"):
  src = build_source(cfg, split)
  return load_sample(src[i], TransformOptions.from_config(cfg, train=True), np.random.default_rng(0))


def _custom(tmp_path, n=3, **kw):
  write_custom(tmp_path, n)
  return make_cfg(**{**dict(image_dir=str(tmp_path / "images"), label_dir=str(tmp_path / "labels")), **kw})


def test_corrupt_image(tmp_path):
  cfg = _custom(tmp_path)
  bad = tmp_path / "images" / "im0.png"
  bad.write_bytes(b"not a png at all")
  with pytest.raises(DataError, match=f"cannot read image file {re.escape(str(bad))}.*Fix"):
    _load(cfg)
  data = (tmp_path / "images" / "im1.png").read_bytes()
  (tmp_path / "images" / "im1.png").write_bytes(data[: len(data) // 2])  # truncated
  with pytest.raises(DataError, match="cannot read image file .*im1.png"):
    _load(cfg, 1)


def test_missing_partner_and_orphans(tmp_path):
  cfg = _custom(tmp_path)
  (tmp_path / "labels" / "im1.png").unlink()
  with pytest.raises(DataError, match=r"image .*images/im1.png has no matching label file"):
    build_source(cfg, "train")
  skip_cfg = make_cfg(**{**cfg.to_dict(), "on_bad_sample": "skip"})
  assert len(build_source(skip_cfg, "train")) == 2 and skip_counter.count == 1
  save(tmp_path / "labels" / "im1.png", np.zeros((24, 30), np.uint8))
  save(tmp_path / "labels" / "extra.png", np.zeros((24, 30), np.uint8))
  with pytest.raises(DataError, match=r"label file .*labels/extra.png has no matching image"):
    build_source(cfg, "train")


def test_missing_folder_and_empty_split(tmp_path):
  cfg = make_cfg(image_dir=str(tmp_path / "nope"), label_dir=str(tmp_path))
  with pytest.raises(DataError, match=f'folder {re.escape(str(tmp_path / "nope"))} does not exist'):
    build_source(cfg, "train")
  (tmp_path / "images").mkdir()
  (tmp_path / "labels").mkdir()
  with pytest.raises(DataError, match="no samples found in .*images"):
    build_source(make_cfg(image_dir=str(tmp_path / "images"), label_dir=str(tmp_path / "labels")), "train")
  with pytest.raises(DataError, match="folder .*train_img does not exist"):
    build_source(make_cfg(dataset="coco_stuff", root=str(tmp_path)), "train")


def test_label_size_mismatch(tmp_path):
  cfg = _custom(tmp_path)
  save(tmp_path / "labels" / "im2.png", np.zeros((20, 30), np.uint8))
  with pytest.raises(DataError, match=r"label map .*labels/im2.png is 30x20 .* image .*images/im2.png is 30x24"):
    _load(cfg, 2)


def test_label_id_out_of_range(tmp_path):
  cfg = _custom(tmp_path, label_nc=182)
  lab = np.zeros((24, 30), np.uint8)
  lab[3, 4] = 200
  path = save(tmp_path / "labels" / "im0.png", lab)
  msg = f"label id 200 in {path} is >= label_nc=182; set config.data.label_nc or contain_dontcare_label"
  with pytest.raises(DataError, match=re.escape(msg)):
    _load(cfg)
  lab[3, 4] = 183  # with a dontcare slot, 182 is valid and 183 is not
  save(path, lab)
  dc = make_cfg(**{**cfg.to_dict(), "contain_dontcare_label": True})
  with pytest.raises(DataError, match=re.escape(f"label id 183 in {path} is > label_nc=182")):
    _load(dc)
  lab[3, 4] = 182
  save(path, lab)
  assert _load(dc)["label"].max() <= 182
  lab[3, 4] = 255  # unknown needs the dontcare slot
  save(path, lab)
  assert _load(dc)["label"].max() <= 182
  with pytest.raises(DataError, match="label id 255 .* needs contain_dontcare_label=True"):
    _load(cfg)


def test_rgb_label_map(tmp_path):
  cfg = _custom(tmp_path)
  path = save(tmp_path / "labels" / "im0.png", rgb(np.random.default_rng(0), 24, 30))
  with pytest.raises(DataError, match=f"label map {re.escape(str(path))} has PIL mode 'RGB'.*index map"):
    _load(cfg)


def test_skip_mode_keeps_batches_full(tmp_path, caplog):
  write_custom(tmp_path, 8, label_nc=7)
  (tmp_path / "images" / "im2.png").write_bytes(b"garbage")
  save(tmp_path / "labels" / "im5.png", np.full((24, 30), 9, np.uint8))
  cfg = make_cfg(image_dir=str(tmp_path / "images"), label_dir=str(tmp_path / "labels"), on_bad_sample="skip")
  with caplog.at_level(logging.WARNING, logger="spade_jax.data"):
    batches = list(make_dataset(cfg, split="train", batch_size=2, seed=1, train=True, num_epochs=1))
  assert [b["image"].shape[0] for b in batches] == [2, 2, 2]
  assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == [0, 1, 3, 4, 6, 7]
  assert skip_counter.count == 2
  assert any("im2.png" in r.getMessage() for r in caplog.records)
  assert any("im5.png" in r.getMessage() for r in caplog.records)
  with pytest.raises(DataError, match="im2.png"):
    list(make_dataset(make_cfg(**{**cfg.to_dict(), "on_bad_sample": "error"}), split="val", batch_size=2, seed=1,
                      train=False))
