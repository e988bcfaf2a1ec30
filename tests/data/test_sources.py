"""Sources over the official layouts: real COCO-Stuff samples, Cityscapes/ADE20K fixtures, custom, tfds."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from spade_jax.data import DataError, build_source, make_dataset, sources
from spade_jax.data.decode import load_sample
from spade_jax.data.transforms import TransformOptions

from .util import COCO_SAMPLE, make_cfg, rgb, save, write_custom


def _all_batches(cfg, split="val", batch_size=4, **kw):
  return list(make_dataset(cfg, split=split, batch_size=batch_size, seed=0, train=False, **kw))


# ---------------------------------------------------------------------------------------------- COCO-Stuff

coco = pytest.mark.skipif(not COCO_SAMPLE.is_dir(),
                          reason=f"real COCO-Stuff samples not found at {COCO_SAMPLE} (shared/data is absent "
                                 "in a fresh clone)")


def _coco_cfg(**kw):
  return make_cfg(dataset="coco_stuff", root=str(COCO_SAMPLE), label_nc=182, contain_dontcare_label=True,
                  no_instance=False, load_size=64, crop_size=64, **kw)


@coco
def test_coco_stuff_real_samples():
  cfg = _coco_cfg()
  src = build_source(cfg, "val")
  assert len(src) == 8 and len(build_source(cfg, "train")) == 13
  rec = src[0]
  assert rec["image"].endswith(".jpg") and rec["label"].endswith(".png") and rec["instance"].endswith(".png")
  assert [sources.stem(rec[k]) for k in ("image", "label", "instance")] == [sources.stem(rec["image"])] * 3
  batches = _all_batches(cfg)
  assert [b["image"].shape[0] for b in batches] == [4, 4]
  b = batches[0]
  assert b["image"].shape == (4, 64, 64, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == b["instance"].shape == (4, 64, 64)
  assert b["label"].dtype == b["instance"].dtype == np.int32
  assert -1.0 <= b["image"].min() < -0.5 and 0.5 < b["image"].max() <= 1.0
  assert 0 <= b["label"].min() and b["label"].max() <= 182
  assert np.concatenate([x["index"] for x in batches]).tolist() == list(range(8))


@coco
def test_coco_stuff_unknown_255_maps_to_label_nc():
  cfg = _coco_cfg()
  src = build_source(cfg, "train")
  raw = [np.asarray(Image.open(src[i]["label"])) for i in range(len(src))]
  i = next((i for i, r in enumerate(raw) if (r == 255).any()), None)
  if i is None:
    pytest.skip("no sample with unlabeled (255) pixels")
  # 'crop' with a crop larger than the image leaves it untouched: the label is the raw map with 255 -> 182.
  opts = TransformOptions.from_config(make_cfg(**{**cfg.to_dict(), "preprocess": "crop", "crop_size": 2048}),
                                      train=False)
  s = load_sample(src[i], opts, np.random.default_rng(0))
  expected = raw[i].astype(np.int32)
  expected[expected == 255] = 182
  np.testing.assert_array_equal(s["label"], expected)
  assert (s["label"] == 182).any() and s["label"].max() == 182
  np.testing.assert_array_equal(s["instance"], np.asarray(Image.open(src[i]["instance"])).astype(np.int32))


# ---------------------------------------------------------------------------------------------- Cityscapes


def write_cityscapes(root, split="train", frames=(("aachen", 19), ("aachen", 2), ("bochum", 7)), h=32, w=64):
  rng = np.random.default_rng(1)
  for city, frame in frames:
    key = f"{city}_000000_{frame:06d}"
    save(root / "leftImg8bit" / split / city / f"{key}_leftImg8bit.png", rgb(rng, h, w))
    gt = root / "gtFine" / split / city
    save(gt / f"{key}_gtFine_labelIds.png", rng.integers(0, 34, (h, w), dtype=np.uint8))
    inst = rng.choice(np.array([0, 7, 26000, 26001, 33002], np.uint16), (h, w))
    save(gt / f"{key}_gtFine_instanceIds.png", inst)                   # 16-bit PNG
    save(gt / f"{key}_gtFine_color.png", rgb(rng, h, w))               # ignored by the loader
    (gt / f"{key}_gtFine_polygons.json").write_text("{}")
  return root


def _city_cfg(root, **kw):
  return make_cfg(**{**dict(dataset="cityscapes", root=str(root), label_nc=35, no_instance=False,
                            preprocess="fixed", load_size=32, crop_size=32, aspect_ratio=2.0), **kw})


def test_cityscapes_layout_pairing_and_16bit_instances(tmp_path):
  write_cityscapes(tmp_path)
  cfg = _city_cfg(tmp_path)
  src = build_source(cfg, "train")
  assert len(src) == 3
  names = [sources.cityscapes_key(src[i]["image"]) for i in range(3)]
  assert names == ["aachen_000000_000002", "aachen_000000_000019", "bochum_000000_000007"]  # natural order
  for i in range(3):
    r = src[i]
    assert r["label"].endswith("_gtFine_labelIds.png") and r["instance"].endswith("_gtFine_instanceIds.png")
    assert {sources.cityscapes_key(r[k]) for k in ("image", "label", "instance")} == {names[i]}
  assert Image.open(src[0]["instance"]).mode in ("I", "I;16")
  (b,) = _all_batches(cfg, split="train")
  assert b["image"].shape == (3, 16, 32, 3) and b["label"].shape == b["instance"].shape == (3, 16, 32)
  assert set(np.unique(b["instance"])) <= {0, 7, 26000, 26001, 33002}
  assert b["instance"].max() > 255                                     # raw 16-bit values survive
  assert b["label"].max() < 34


def test_cityscapes_missing_instance_names_file(tmp_path):
  write_cityscapes(tmp_path)
  gone = tmp_path / "gtFine/train/bochum/bochum_000000_000007_gtFine_instanceIds.png"
  gone.unlink()
  with pytest.raises(DataError, match="bochum_000000_000007_leftImg8bit.png has no matching instance"):
    build_source(_city_cfg(tmp_path), "train")
  assert len(build_source(_city_cfg(tmp_path, no_instance=True), "train")) == 3


# ---------------------------------------------------------------------------------------------- ADE20K


def write_ade(root, split="training", n=3, h=24, w=32):
  rng = np.random.default_rng(2)
  tag = {"training": "train", "validation": "val"}[split]
  for i in range(1, n + 1):
    name = f"ADE_{tag}_{i:08d}"
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb(rng, h, w)).save(root / "images" / split / f"{name}.jpg", quality=95)
    lab = rng.integers(0, 151, (h, w), dtype=np.uint8)
    lab[0, :3] = (0, 150, 1)
    save(root / "annotations" / split / f"{name}.png", lab)
  return root


def test_ade20k_layout_keeps_raw_labels(tmp_path):
  write_ade(tmp_path, "validation")
  cfg = make_cfg(dataset="ade20k", root=str(tmp_path), label_nc=150, contain_dontcare_label=True,
                 no_instance=True, preprocess="none")
  src = build_source(cfg, "val")
  assert [sources.stem(src[i]["image"]) for i in range(3)] == [f"ADE_val_{i:08d}" for i in (1, 2, 3)]
  (b,) = _all_batches(cfg)
  assert b["image"].shape == (3, 32, 32, 3) and "instance" not in b
  raw = np.asarray(Image.open(src[0]["label"])).astype(np.int32)
  resized = np.asarray(Image.open(src[0]["label"]).resize((32, 32), Image.Resampling.NEAREST)).astype(np.int32)
  np.testing.assert_array_equal(b["label"][0], resized)                  # raw 0..150, no shift
  assert raw.max() == 150 and raw.min() == 0
  with pytest.raises(DataError, match="folder .*images/training does not exist"):
    build_source(cfg, "train")


# ---------------------------------------------------------------------------------------------- custom


def test_custom_pairs_by_basename_and_resolves_split_dirs(tmp_path):
  for split in ("train", "val"):
    write_custom(tmp_path / split, 2 if split == "val" else 12, instances=True)
  cfg = make_cfg(root=str(tmp_path))                                     # demo layout {root}/{split}/...
  assert len(build_source(cfg, "train")) == 12 and len(build_source(cfg, "val")) == 2
  src = build_source(cfg, "train")
  assert [sources.stem(src[i]["image"]) for i in range(12)][:3] == ["im0", "im1", "im2"]
  assert sources.stem(src[11]["image"]) == "im11"                        # natural, not lexicographic
  cfg = make_cfg(image_dir=str(tmp_path / "{split}/images"), label_dir=str(tmp_path / "{split}/labels"),
                 instance_dir=str(tmp_path / "{split}/instances"), no_instance=False, max_dataset_size=5)
  src = build_source(cfg, "train")
  assert len(src) == 5 and all(sources.stem(src[i]["instance"]) == f"im{i}" for i in range(5))
  assert pickle.loads(pickle.dumps(src))[3] == src[3]
  with pytest.raises(DataError, match="instance_dir is empty"):
    build_source(make_cfg(root=str(tmp_path), no_instance=False), "train")


def test_natural_sort():
  files = ["a/img10.png", "a/img2.png", "a/img1.png"]
  assert sorted(files, key=sources.natural_key) == ["a/img1.png", "a/img2.png", "a/img10.png"]


# ---------------------------------------------------------------------------------------------- tfds


class FakeTfdsSource:
  """Stands in for tfds.data_source(...): random access to dicts of numpy features."""

  def __init__(self, n=5, h=16, w=32, instance=False):
    rng = np.random.default_rng(3)
    self.records = []
    for i in range(n):
      rec = {"image_id": f"frame{i}", "image_left": rgb(rng, h, w),
             "segmentation_label": rng.integers(0, 34, (h, w, 1), dtype=np.uint8)}
      if instance:
        rec["instance"] = rng.choice(np.array([0, 26001, 26002], np.int64), (h, w, 1))
      self.records.append(rec)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


def test_tfds_source_maps_features(monkeypatch):
  fake = FakeTfdsSource()
  opened = []
  monkeypatch.setattr(sources, "open_tfds_split", lambda *a: opened.append(a) or fake)
  cfg = make_cfg(dataset="tfds", tfds_name="cityscapes/semantic_segmentation", tfds_data_dir="/d",
                 label_nc=35, preprocess="fixed", crop_size=32, aspect_ratio=2.0)
  (b, b2) = _all_batches(cfg, batch_size=3)
  assert opened[0] == ("cityscapes/semantic_segmentation", "val", "/d")
  assert b["image"].shape == (3, 16, 32, 3) and b["label"].shape == (3, 16, 32) and b2["index"].tolist() == [3, 4]
  np.testing.assert_array_equal(b["label"][1], fake[1]["segmentation_label"][..., 0])
  np.testing.assert_array_equal(b["image"][0], fake[0]["image_left"].astype(np.float32) / 255 * 2 - 1)


def test_tfds_cityscapes_needs_no_instance(monkeypatch):
  monkeypatch.setattr(sources, "open_tfds_split", lambda *a: FakeTfdsSource())
  cfg = make_cfg(dataset="tfds", tfds_name="cityscapes", label_nc=35, no_instance=False)
  with pytest.raises(DataError, match="no instance maps.*no_instance=True"):
    build_source(cfg, "train")


def test_tfds_with_instance_feature(monkeypatch):
  monkeypatch.setattr(sources, "open_tfds_split", lambda *a: FakeTfdsSource(n=2, instance=True))
  cfg = make_cfg(dataset="tfds", tfds_name="my_set", label_nc=35, no_instance=False, preprocess="none")
  (b,) = _all_batches(cfg)
  assert b["instance"].shape == (2, 32, 32) and set(np.unique(b["instance"])) <= {0, 26001, 26002}
