"""Label palettes, class names, colourising labels and decoding colour-coded label PNGs."""
import numpy as np
import pytest

from spade_jax import colormap as cm


def _reference_palette(n):
  """The bit-interleave palette written the long way (binary strings, 7 rounds, XOR) as the spec describes it."""
  out = np.zeros((n, 3), np.uint8)
  for i in range(n):
    r = g = b = 0
    cid = i + 1
    for j in range(7):
      bits = format(cid, "08b")
      r ^= int(bits[-1]) << (7 - j)
      g ^= int(bits[-2]) << (7 - j)
      b ^= int(bits[-3]) << (7 - j)
      cid >>= 3
    out[i] = (r, g, b)
  return out


@pytest.mark.parametrize("n", [1, 13, 37, 151, 152, 184, 300])
def test_generic_palette_matches_spec(n):
  cmap = cm.label_colormap(n)
  assert cmap.dtype == np.uint8 and cmap.shape == (n, 3)
  np.testing.assert_array_equal(cmap, _reference_palette(n))


def test_generic_palette_first_colours_and_distinct():
  np.testing.assert_array_equal(cm.label_colormap(4), [[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]])
  cmap = cm.label_colormap(184)
  assert len({tuple(c) for c in cmap}) == 184


def test_cityscapes_table():
  cmap = cm.label_colormap(35)
  assert cmap.shape == (35, 3) and cmap.dtype == np.uint8
  assert not cmap[:5].any()
  assert tuple(cmap[7]) == (128, 64, 128)     # road
  assert tuple(cmap[26]) == (0, 0, 142)       # car
  assert tuple(cmap[33]) == (119, 11, 32)     # bicycle
  assert tuple(cmap[34]) == (0, 0, 142)       # license plate
  assert cm.CITYSCAPES_NAMES[7] == "road" and cm.CITYSCAPES_NAMES[26] == "car"
  assert len(cm.CITYSCAPES_NAMES) == 35 and cm.CITYSCAPES_NAMES[-1] == "license plate"


def test_coco_stuff_overrides():
  cmap, generic = cm.label_colormap(182), _reference_palette(182)
  expect = {154: (54, 62, 167), 156: (95, 219, 255), 168: (140, 104, 47), 105: (170, 170, 170), 123: (29, 195, 49)}
  for i, colour in expect.items():
    assert tuple(cmap[i]) == colour
  assert [cm.COCO_STUFF_NAMES[i] for i in sorted(expect)] == ["clouds", "grass", "sea", "sky-other", "tree"]
  other = np.ones(182, bool)
  other[list(expect)] = False
  np.testing.assert_array_equal(cmap[other], generic[other])


def test_name_tables():
  assert len(cm.COCO_STUFF_NAMES) == 182 and len(set(cm.COCO_STUFF_NAMES)) == 182
  assert cm.COCO_STUFF_NAMES[0] == "person" and cm.COCO_STUFF_NAMES[91] == "banner"
  assert cm.COCO_STUFF_NAMES[181] == "wood"
  assert len(cm.ADE20K_NAMES) == 151 and len(set(cm.ADE20K_NAMES)) == 151
  assert cm.ADE20K_NAMES[:3] == ("other", "wall", "building") and cm.ADE20K_NAMES[150] == "flag"
  assert cm.ADE20K_NAMES[45] == "chest of drawers"


def test_palette_for_and_names_for():
  np.testing.assert_array_equal(cm.palette_for("cityscapes", 35), cm.label_colormap(35))
  coco = cm.palette_for("coco_stuff", 183)                  # 182 classes + don't-care slot
  np.testing.assert_array_equal(coco[:182], cm.label_colormap(182))
  assert not coco[182].any()
  np.testing.assert_array_equal(cm.palette_for("COCO-Stuff", 182), cm.label_colormap(182))
  np.testing.assert_array_equal(cm.palette_for("ade20k", 151), _reference_palette(151))
  np.testing.assert_array_equal(cm.palette_for("custom", 13), _reference_palette(13))
  assert cm.names_for("coco_stuff", 183)[182] == "unlabeled"
  assert cm.names_for("ade20k", 151)[1] == "wall"
  assert cm.names_for("cityscapes", 36)[35] == "class_35"
  assert cm.names_for("custom", 3) == ["class_0", "class_1", "class_2"]


def test_colorize_shapes_and_out_of_range():
  cmap = cm.label_colormap(5)
  label = np.array([[[0, 1, 2], [3, 4, 5]], [[-1, 255, 0], [1, 1, 1]]])
  rgb = cm.colorize(label, cmap)
  assert rgb.shape == (2, 2, 3, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[0, 0], cmap[:3])
  assert not rgb[0, 1, 2].any() and not rgb[1, 0, 0].any() and not rgb[1, 0, 1].any()


def test_decode_roundtrip():
  rng = np.random.default_rng(0)
  cmap = cm.palette_for("coco_stuff", 182)
  label = rng.integers(0, 182, (16, 20))
  np.testing.assert_array_equal(cm.decode_color_label(cm.colorize(label, cmap), cmap), label)


def test_decode_shared_colour_takes_lowest_id():
  cmap = cm.label_colormap(35)
  label = np.array([[0, 3, 7], [26, 34, 4]])
  np.testing.assert_array_equal(cm.decode_color_label(cm.colorize(label, cmap), cmap), [[0, 0, 7], [26, 26, 0]])


def test_decode_reports_unknown_colours():
  cmap = cm.label_colormap(3)
  rgb = cm.colorize(np.zeros((4, 4), int), cmap)
  rgb[0, :3] = (1, 2, 3)
  rgb[1, 0] = (9, 9, 9)
  with pytest.raises(ValueError, match=r"2 colour\(s\).*\(1,2,3\) x3, \(9,9,9\) x1"):
    cm.decode_color_label(rgb, cmap)
  many = np.arange(8 * 3, dtype=np.uint8).reshape(1, 8, 3) + 1
  with pytest.raises(ValueError) as e:
    cm.decode_color_label(many, cmap)
  assert "8 colour(s)" in str(e.value) and str(e.value).count(" x1") == 5
