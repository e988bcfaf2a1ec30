"""The demo segmenter: trained on real demo images it segments real validation images far above chance; cached
weights are reused (no retraining), and a corrupt or foreign cache is replaced with a warning."""
import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import pytest

from configs import demo as demo_config
from spade_jax.data import demo
from spade_jax.evaluation import demo_segmenter as ds
from spade_jax.evaluation.metrics import ConfusionMatrix

SIZE = 32          # 32x32 keeps the test fast; the default demo set is 64x64
NUM_TRAIN, NUM_VAL = 64, 8
STEPS = 150        # measured: real-val pixel accuracy 0.84-0.87, mIoU 0.49-0.57 (seeds 0-2); untrained 0.17 / 0.07
TINY_STEPS = 5     # for the cache-handling tests (the outcome is irrelevant there, only what gets trained/loaded)


def _data_cfg(root):
  c = demo_config.get_config().data
  c.root = str(root)
  c.load_size = c.crop_size = SIZE
  return c


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
  return _data_cfg(demo.generate(tmp_path_factory.mktemp("landscapes"), NUM_TRAIN, NUM_VAL, SIZE, seed=0))


@pytest.fixture(scope="module")
def trained(data_cfg, tmp_path_factory):
  """(segmenter, info, log lines, cache path) of a first load_or_train call (trains)."""
  cache = tmp_path_factory.mktemp("seg_cache") / "seg.msgpack"
  lines = []
  seg, info = ds.load_or_train(data_cfg, cache, steps=STEPS, log=lines.append)
  return seg, info, lines, cache


@pytest.fixture(scope="module")
def tiny(data_cfg, tmp_path_factory):
  """A TINY_STEPS segmenter cached in its own folder (for the corrupt / foreign cache tests)."""
  cache = tmp_path_factory.mktemp("tiny_cache") / "seg.msgpack"
  seg, info = ds.load_or_train(data_cfg, cache, steps=TINY_STEPS, log=lambda m: None)
  assert not info["loaded"]
  return seg, cache


def test_trained_segmenter_scores_real_images_far_above_chance(data_cfg, trained):
  seg, info, lines, _ = trained
  assert not info["loaded"] and info["train_seconds"] > 0
  # progress went through `log`: step, loss, elapsed, ETA
  assert any("step 1/" in m and "loss" in m and "elapsed" in m and "ETA" in m for m in lines), lines
  assert any(f"step {STEPS}/{STEPS}" in m for m in lines), lines

  scores = ds.real_ceiling(seg, data_cfg)
  assert scores["num_pixels"] == NUM_VAL * SIZE * SIZE
  untrained = ds.real_ceiling(ds.DemoSegmenter(ds.init_variables(ds.SegNet(), jax.random.PRNGKey(0))), data_cfg)
  # chance: always predicting the most frequent training class
  _, train_labels = ds.load_split(data_cfg, "train")
  _, val_labels = ds.load_split(data_cfg, "val")
  majority = np.bincount(train_labels.ravel(), minlength=7).argmax()
  chance = float((val_labels == majority).mean())
  assert chance < 0.6
  assert scores["pixel_accuracy"] > 0.75, scores
  assert scores["pixel_accuracy"] > chance + 0.2, (scores, chance)
  assert scores["pixel_accuracy"] > untrained["pixel_accuracy"] + 0.4, (scores, untrained)
  assert scores["miou"] > 0.4 and scores["miou"] > untrained["miou"] + 0.25, (scores, untrained)
  # real_ceiling is the metrics module's score of segment() on the real images
  images, labels = ds.load_split(data_cfg, "val")
  cm = ConfusionMatrix(7)
  cm.update(labels, seg.segment(images))
  assert cm.scores()["miou"] == pytest.approx(scores["miou"])


def test_segment_shapes_and_batching(data_cfg, trained):
  seg, *_ = trained
  assert seg.num_classes == 7 and seg.class_names == demo.CLASS_NAMES
  assert 50_000 < seg.num_params < 250_000
  images, _ = ds.load_split(data_cfg, "train")
  out = seg.segment(images[:11], batch_size=4)  # chunks of 4, 4, 3 (padded)
  assert out.shape == (11, SIZE, SIZE) and out.dtype == np.int32
  assert out.min() >= 0 and out.max() < 7
  np.testing.assert_array_equal(out, seg.segment(images[:11]))
  np.testing.assert_array_equal(out[3], seg.segment(images[3]))  # one HxWx3 image -> HxW
  odd = seg.segment(images[:2, :29, :23])  # any size: odd sizes are padded inside the network
  assert odd.shape == (2, 29, 23)
  with pytest.raises(TypeError, match="uint8"):
    seg.segment(images[:2].astype(np.float32))


def test_second_call_loads_the_cache_without_training(data_cfg, trained, monkeypatch):
  seg, info, _, cache = trained
  assert info["cache_path"] == str(cache) and cache.exists()
  meta = json.loads(cache.with_name(cache.name + ".json").read_text())
  assert meta["fingerprint"] == info["fingerprint"] and meta["fingerprint"]["steps"] == STEPS
  assert meta["fingerprint"]["num_train_images"] == NUM_TRAIN and meta["protocol"] == ds.PROTOCOL

  def no_training(*a, **k):
    raise AssertionError("load_or_train retrained although a valid cache exists")

  monkeypatch.setattr(ds.training, "train_demo_segmenter", no_training)
  lines = []
  seg2, info2 = ds.load_or_train(data_cfg, cache, steps=STEPS, log=lines.append)
  assert info2["loaded"] and info2["train_seconds"] is None and info2["cache_warning"] is None
  assert info2["fingerprint_id"] == info["fingerprint_id"]
  assert any("loaded" in m for m in lines)
  images, _ = ds.load_split(data_cfg, "val")
  np.testing.assert_array_equal(seg2.segment(images), seg.segment(images))
  for a, b in zip(jax.tree_util.tree_leaves(seg.variables), jax.tree_util.tree_leaves(seg2.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_default_cache_path_is_next_to_the_data(data_cfg):
  fp = ds.data_fingerprint(data_cfg, steps=STEPS, batch_size=ds.DEFAULT_BATCH_SIZE, seed=0)
  path = ds.default_cache_path(data_cfg, fp)
  assert path.parent == pathlib.Path(data_cfg.root) / "segmenter" and path.suffix == ".msgpack"
  assert ds.default_cache_path(data_cfg, dict(fp, steps=STEPS + 1)) != path  # keyed by the settings too


def test_corrupt_cache_is_retrained_with_a_warning(data_cfg, tiny, tmp_path, caplog):
  seg, cache = tiny
  broken = tmp_path / "seg.msgpack"
  shutil.copy(cache, broken)
  shutil.copy(cache.with_name(cache.name + ".json"), tmp_path / "seg.msgpack.json")
  data = bytearray(broken.read_bytes())
  data[len(data) // 2] ^= 0xFF
  broken.write_bytes(bytes(data))
  lines = []
  with caplog.at_level(logging.WARNING, logger=ds.__name__):
    seg2, info = ds.load_or_train(data_cfg, broken, steps=TINY_STEPS, log=lines.append)
  assert not info["loaded"] and "checksum" in info["cache_warning"]
  assert any("WARNING" in m and "checksum" in m for m in lines), lines
  assert any("checksum" in r.getMessage() for r in caplog.records)
  # retrained deterministically (same seed, same data) and rewritten: the next call loads it
  for a, b in zip(jax.tree_util.tree_leaves(seg.variables), jax.tree_util.tree_leaves(seg2.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, info3 = ds.load_or_train(data_cfg, broken, steps=TINY_STEPS, log=lambda m: None)
  assert info3["loaded"]
  # unreadable metadata is a ValueError (which load_or_train turns into a warning and a retrain), not a crash
  (tmp_path / "seg.msgpack.json").write_text("{not json")
  with pytest.raises(ValueError, match="cannot read"):
    ds.DemoSegmenter.load(broken)


def test_cache_of_another_data_set_is_not_used(tiny, tmp_path):
  _, cache = tiny
  other = _data_cfg(demo.generate(tmp_path / "other", NUM_TRAIN, NUM_VAL, SIZE, seed=1))
  foreign = tmp_path / "seg.msgpack"
  shutil.copy(cache, foreign)
  shutil.copy(cache.with_name(cache.name + ".json"), tmp_path / "seg.msgpack.json")
  lines = []
  _, info = ds.load_or_train(other, foreign, steps=TINY_STEPS, log=lines.append)
  assert not info["loaded"]
  assert "another data set" in info["cache_warning"] and "root" in info["cache_warning"]
  assert any("WARNING" in m for m in lines)
  meta = json.loads((tmp_path / "seg.msgpack.json").read_text())
  assert meta["fingerprint"]["root"] == str(pathlib.Path(other.root).absolute())  # replaced by the retrained one


def test_non_demo_data_sets_are_rejected(data_cfg, tmp_path):
  wrong_nc = _data_cfg(data_cfg.root)
  wrong_nc.label_nc = 13
  with pytest.raises(ValueError, match=r"label_nc=13.*label_nc=7") as e:
    ds.load_or_train(wrong_nc, tmp_path / "x.msgpack")
  assert str(data_cfg.root) in str(e.value)
  missing = _data_cfg(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="does not exist") as e:
    ds.train_demo_segmenter(missing, steps=1)
  assert str(tmp_path / "nowhere") in str(e.value) and "spade_jax.data.demo" in str(e.value)
  coco = _data_cfg(data_cfg.root)
  coco.dataset = "coco_stuff"
  with pytest.raises(ValueError, match="not a demo-style data set"):
    ds.real_ceiling(None, coco)
