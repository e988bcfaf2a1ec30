"""Label colour maps and class names: label maps -> RGB for sample grids, and colour-coded label PNGs -> ids.

The palettes follow the official SPADE `labelcolormap(N)` (see docs/spade_reference.md §12):
  * N == 35: the standard Cityscapes label-id colours;
  * otherwise a bit-interleave palette (bits of i+1 spread over the top bits of R, G, B), with five COCO-Stuff
    classes (sea, sky-other, tree, clouds, grass) overridden by natural colours when N == 182.

Quirk of the official code: its visualizer calls the palette with `label_nc + 2` (37, 152, 184), so the Cityscapes
table and the COCO overrides never reach its saved images; only the generic palette appears there. We use the
proper tables (`palette_for`), so our Cityscapes/COCO colours differ from images the official code saved.
"""
from __future__ import annotations

import numpy as np

from spade_jax.semantics import label_channels

# Cityscapes label ids 0..33 (cityscapesScripts labels.py) plus 'license plate' (id -1 there), kept at index 34
# because SPADE's 35-entry table gives it a colour.
CITYSCAPES_NAMES = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground", "road",
    "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel", "pole",
    "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "caravan", "trailer", "train", "motorcycle", "bicycle", "license plate",
)

_CITYSCAPES_COLORS = np.array([
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81), (128, 64, 128),
    (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (180, 165, 180), (150, 100, 100), (150, 120, 90), (153, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32), (0, 0, 142),
], np.uint8)

# COCO-Stuff 182 (nightrome/cocostuff labels.txt), 0-based: index i is COCO-Stuff id i+1, as SPADE's
# util/coco.id2label does. Things 0..90 (11 of them unused by COCO), stuff 91..181.
COCO_STUFF_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk", "toilet", "door", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "blender", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCO_STUFF_UNLABELED = "unlabeled"   # raw label 255 -> index 182, the don't-care slot

_COCO_STUFF_OVERRIDES = {"sea": (54, 62, 167), "sky-other": (95, 219, 255), "tree": (140, 104, 47),
                         "clouds": (170, 170, 170), "grass": (29, 195, 49)}

# ADE20K SceneParsing (ADEChallengeData2016): index 0 is 'other' (pixels outside the 150 classes), then the first
# synonym of each row of objectInfo150.txt.
ADE20K_NAMES = (
    "other", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

_ALIASES = {"cityscapes": "cityscapes", "coco_stuff": "coco_stuff", "coco": "coco_stuff", "cocostuff": "coco_stuff",
            "ade20k": "ade20k", "ade": "ade20k"}


def _bit_palette(n: int) -> np.ndarray:
  """Generic palette: bit k of (i+1) goes to bit 7-k//3 of channel k%3, so early classes get distinct, saturated
  colours and class 0 is not black."""
  ids = np.arange(1, n + 1, dtype=np.int64)
  cmap = np.zeros((n, 3), np.int64)
  for j in range(8):
    for c in range(3):
      cmap[:, c] |= ((ids >> (3 * j + c)) & 1) << (7 - j)
  return cmap.astype(np.uint8)


def label_colormap(n: int) -> np.ndarray:
  """The official `labelcolormap(N)` as uint8 [n, 3] (35 -> Cityscapes table; 182 -> COCO-Stuff overrides)."""
  if n == 35:
    return _CITYSCAPES_COLORS.copy()
  cmap = _bit_palette(n)
  if n == 182:
    for i, name in enumerate(COCO_STUFF_NAMES):
      if name in _COCO_STUFF_OVERRIDES:
        cmap[i] = _COCO_STUFF_OVERRIDES[name]
  return cmap


def _canonical(dataset: str) -> str:
  return _ALIASES.get(dataset.lower().replace("-", "_"), "generic")


def palette_for(dataset: str, n: int) -> np.ndarray:
  """uint8 [n, 3] for a config's `data.dataset` and channel count. Cityscapes/COCO-Stuff use their tables; ids past
  a table (e.g. COCO's don't-care slot 182) are black. ADE20K and custom data get the generic palette."""
  kind = _canonical(dataset)
  if kind not in ("cityscapes", "coco_stuff"):
    return _bit_palette(n)
  base = label_colormap(35 if kind == "cityscapes" else 182)
  out = np.zeros((n, 3), np.uint8)
  k = min(n, len(base))
  out[:k] = base[:k]
  return out


def names_for(dataset: str, n: int) -> list[str]:
  """n class names for a data set; unknown ids are named 'class_{i}'."""
  table = {"cityscapes": CITYSCAPES_NAMES, "coco_stuff": COCO_STUFF_NAMES + (COCO_STUFF_UNLABELED,),
           "ade20k": ADE20K_NAMES}.get(_canonical(dataset), ())
  return [table[i] if i < len(table) else f"class_{i}" for i in range(n)]


def for_data(data_cfg) -> tuple[list[str], np.ndarray]:
  """(class names, uint8 [n, 3] palette) for a config's `data`: the data set's tables, or for the generated demo
  landscapes (`data.demo_generate`, a 'custom' data set) their class names and colours."""
  n = label_channels(data_cfg)
  if data_cfg.demo_generate:
    from spade_jax.data import demo
    if n == demo.NUM_CLASSES:
      return list(demo.CLASS_NAMES), np.asarray(demo.COLORS, np.uint8)
  return names_for(data_cfg.dataset, n), palette_for(data_cfg.dataset, n)


def colorize(label, colormap) -> np.ndarray:
  """int labels [..., H, W] -> uint8 [..., H, W, 3]; ids outside the table (negative, don't-care) are black."""
  label = np.asarray(label)
  cmap = np.asarray(colormap, np.uint8)
  n = len(cmap)
  lut = np.concatenate([cmap, np.zeros((1, 3), np.uint8)])
  return lut[np.where((label >= 0) & (label < n), label, n)]


def decode_color_label(rgb, colormap) -> np.ndarray:
  """uint8 [H, W, 3] colour-coded label PNG -> int32 [H, W] ids. When two classes share a colour (Cityscapes ids 0-4
  are all black), the lowest id wins. Raises ValueError naming colours that are in no class."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] < 3:
    raise ValueError(f"expected an [H, W, 3] RGB label image, got shape {rgb.shape}")
  rgb = rgb[..., :3].astype(np.int64)
  cmap = np.asarray(colormap, np.int64)
  key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
  ckey = (cmap[:, 0] << 16) | (cmap[:, 1] << 8) | cmap[:, 2]
  uniq, first = np.unique(ckey, return_index=True)          # first occurrence = lowest id per colour
  pos = np.clip(np.searchsorted(uniq, key), 0, len(uniq) - 1)
  known = uniq[pos] == key
  if not known.all():
    bad, counts = np.unique(key[~known], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:5]
    shown = ", ".join(f"({b >> 16},{(b >> 8) & 255},{b & 255}) x{c}" for b, c in zip(bad[order], counts[order]))
    raise ValueError(f"{len(bad)} colour(s) in the label image match no class of the {len(cmap)}-entry colour map "
                     f"(most frequent, as (r,g,b) x pixels: {shown}); was it resized with a smoothing filter, or "
                     f"saved as JPEG? Save label maps as nearest-neighbour PNGs.")
  return first[pos].astype(np.int32)
