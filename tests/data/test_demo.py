"""The procedural landscapes generator: determinism, class/style coverage, marker no-op, loadable layout."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from spade_jax.data import build_source, demo, make_dataset
from spade_jax.data.errors import DataError

from .util import make_cfg


def test_samples_are_deterministic_and_cover_classes_and_styles():
  labels, styles = [], set()
  for i in range(30):
    lab, img, style = demo.sample(0, "train", i, 48)
    lab2, img2, style2 = demo.sample(0, "train", i, 48)
    assert np.array_equal(lab, lab2) and np.array_equal(img, img2) and style == style2
    assert lab.shape == (48, 48) and lab.dtype == np.uint8 and img.shape == (48, 48, 3) and img.dtype == np.uint8
    labels.append(lab)
    styles.add(style)
  assert set(np.unique(np.stack(labels))) == set(range(demo.NUM_CLASSES))
  assert styles == set(demo.STYLES)
  assert all((lab[0] != demo.GRASS).all() for lab in labels)        # sky/cloud/mountain on top
  assert np.mean([(lab[-1] == demo.SKY).any() for lab in labels]) == 0  # never sky at the bottom
  assert not np.array_equal(demo.sample(1, "train", 0, 48)[0], labels[0])
  assert len(demo.COLORS) == len(demo.CLASS_NAMES) == demo.NUM_CLASSES


def test_style_changes_image_not_labels():
  lab = demo.label_map(np.random.default_rng(0), 32)
  day = demo.render(lab, np.random.default_rng(1), "day").astype(float)
  night = demo.render(lab, np.random.default_rng(1), "night").astype(float)
  assert day.mean() > night.mean() + 50


def test_generate_writes_layout_marker_noop_and_loads(tmp_path):
  t = time.perf_counter()
  out = demo.generate(tmp_path / "a", num_train=200, num_val=4, size=64, seed=3)
  assert time.perf_counter() - t < 10.0                             # target < 5 s on 2 cores
  files = sorted((out / "train" / "images").glob("*.png"))
  assert len(files) == 200 and len(list((out / "val" / "labels").glob("*.png"))) == 4
  lab = Image.open(out / "train" / "labels" / "00007.png")
  img = Image.open(out / "train" / "images" / "00007.png")
  assert lab.mode == "L" and img.mode == "RGB" and img.size == (64, 64)
  ref_lab, ref_img, ref_style = demo.sample(3, "train", 7, 64)
  assert np.array_equal(np.asarray(lab), ref_lab) and np.array_equal(np.asarray(img), ref_img)

  styles = json.loads((out / "train" / demo.STYLES_FILE).read_text())  # each image's style, for the evaluation
  assert len(styles) == 200 and styles["00007"] == ref_style and set(styles.values()) == set(demo.STYLES)
  assert json.loads((out / "val" / demo.STYLES_FILE).read_text()) == {
      f"{i:05d}": demo.sample(3, "val", i, 64)[2] for i in range(4)}

  mtime = files[0].stat().st_mtime_ns
  demo.generate(out, num_train=200, num_val=4, size=64, seed=3)    # same arguments: no-op
  assert files[0].stat().st_mtime_ns == mtime
  demo.generate(out, num_train=5, num_val=2, size=32, seed=3)      # different arguments: rewritten
  assert len(list((out / "train" / "images").glob("*.png"))) == 5
  assert len(json.loads((out / "train" / demo.STYLES_FILE).read_text())) == 5
  assert Image.open(out / "train" / "images" / "00000.png").size == (32, 32)

  cfg = make_cfg(root=str(out), label_nc=demo.NUM_CLASSES, load_size=32, crop_size=32)
  assert len(build_source(cfg, "val")) == 2
  (b,) = list(make_dataset(cfg, split="train", batch_size=4, seed=0, train=True, num_epochs=1))
  assert b["image"].shape == (4, 32, 32, 3) and b["label"].max() < demo.NUM_CLASSES


def test_cli(tmp_path, capsys):
  demo.main([f"--out={tmp_path}", "--num_train=2", "--num_val=1", "--size=32"])
  assert "label_nc=7" in capsys.readouterr().out
  assert len(list((tmp_path / "train" / "labels").glob("*.png"))) == 2


def test_generate_never_touches_files_it_did_not_write(tmp_path):
  mine = tmp_path / "photos"
  (mine / "train" / "images").mkdir(parents=True)
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(mine / "train" / "images" / "00000.png")
  with pytest.raises(DataError, match=r"photos holds files the demo generator did not write .*00000\.png"):
    demo.generate(mine, num_train=3, num_val=2, size=32)
  assert [p.name for p in mine.rglob("*") if p.is_file()] == ["00000.png"]  # nothing written, nothing deleted
  (tmp_path / "a_file").write_text("")
  with pytest.raises(DataError, match="is a file"):
    demo.generate(tmp_path / "a_file", num_train=3, num_val=2, size=32)

  out = demo.generate(tmp_path / "ours", num_train=6, num_val=2, size=32)
  (out / "train" / "images" / "notes.txt").write_text("added by the user")
  (out / "train" / "images" / "00099.png").write_bytes(b"the user put this here")
  demo.generate(out, num_train=3, num_val=2, size=32)  # a rewrite deletes only what the earlier run wrote
  left = sorted(p.name for p in (out / "train" / "images").iterdir())
  assert left == ["00000.png", "00001.png", "00002.png", "00099.png", "notes.txt"]


def test_an_interrupted_generation_is_recognised_as_ours_and_redone(tmp_path, monkeypatch):
  calls = []

  def failing_sample(seed, split, i, size):
    if len(calls) == 4:
      raise KeyboardInterrupt
    calls.append(i)
    return real(seed, split, i, size)

  real = demo.sample
  monkeypatch.setattr(demo, "sample", failing_sample)
  with pytest.raises(KeyboardInterrupt):
    demo.generate(tmp_path / "d", num_train=8, num_val=2, size=32)
  assert demo.read_marker(tmp_path / "d") == {"complete": False, "params": demo.read_marker(tmp_path / "d")["params"]}
  monkeypatch.setattr(demo, "sample", real)
  out = demo.generate(tmp_path / "d", num_train=8, num_val=2, size=32)  # the marker says ours: finished, not refused
  assert demo.read_marker(out)["complete"] and len(list((out / "train" / "images").glob("*.png"))) == 8
