"""Random-access sources over the official SPADE data layouts (plus custom folders and tfds ArrayRecords).

Every source is a `grain.sources.RandomAccessDataSource`-compatible object (``__len__``, ``__getitem__``,
picklable) whose records are small dicts::

    {'image': path | HxWx3 uint8, 'label': path | HxW int, 'instance': path | array | None, 'index': int}

File lists are natural-sorted and paired by name (the pairing key depends on the data set); an unpaired file
is a `DataError` naming it (or, with ``on_bad_sample='skip'``, a logged and counted skip). Decoding happens
later, in `decode.py`, so listing stays cheap and the records stay tiny when shipped to worker processes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spade_jax.data.errors import SKIP_HINT, DataError, handle_bad
from spade_jax.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")


def natural_key(path: str) -> list[Any]:
  """Sort key that orders 'img2' before 'img10' (the official loaders natural-sort their file lists)."""
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def list_images(folder: str | os.PathLike, *, recursive: bool = False, suffix: str = "") -> list[str]:
  """Natural-sorted image files in `folder` (optionally recursive, optionally ending with `suffix`)."""
  folder = Path(folder)
  if not folder.is_dir():
    raise DataError(f"folder {folder} does not exist (or is not a directory). Fix: check config.data.root / "
                    "the *_dir settings and the data set layout described in spade_jax/data/sources.py.")
  it = folder.rglob("*") if recursive else folder.iterdir()
  files = [str(p) for p in it
           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS
           and p.name.endswith(suffix)]
  return sorted(files, key=natural_key)


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _by_key(files: Sequence[str], key: Callable[[str], str], what: str) -> dict[str, str]:
  out: dict[str, str] = {}
  for f in files:
    k = key(f)
    if k in out:
      raise DataError(f"{what} files {out[k]} and {f} share the pairing key {k!r}. Fix: keep only one of them.")
    out[k] = f
  return out


def pair_files(images: Sequence[str], labels: Sequence[str], instances: Sequence[str] | None,
               key: Callable[[str], str], *, label_dir: str, instance_dir: str = "",
               on_bad_sample: str = "error") -> list[dict[str, Any]]:
  """Pairs image/label(/instance) files by `key`; unpaired files are errors (or counted skips).

  `label_dir` / `instance_dir` only name the folders in error messages.
  """
  label_by = _by_key(labels, key, "label")
  inst_by = _by_key(instances, key, "instance") if instances is not None else None
  records: list[dict[str, Any]] = []
  for img in images:
    k = key(img)
    missing = []
    if k not in label_by:
      missing.append(("label", label_dir))
    if inst_by is not None and k not in inst_by:
      missing.append(("instance", instance_dir))
    if missing:
      kind, where = missing[0]
      handle_bad(DataError(f"image {img} has no matching {kind} file (pairing key {k!r}, looked in {where}). "
                           f"Fix: add the missing file or remove the unpaired image, {SKIP_HINT}."),
                 f"missing {kind}", on_bad_sample)
      continue
    records.append({"image": img, "label": label_by[k], "instance": inst_by[k] if inst_by is not None else None})
  image_keys = {key(i) for i in images}
  for kind, by in (("label", label_by), ("instance", inst_by or {})):
    for k, f in by.items():
      if k not in image_keys:
        handle_bad(DataError(f"{kind} file {f} has no matching image (pairing key {k!r}). "
                             f"Fix: add the image or remove the unpaired {kind} file, {SKIP_HINT}."),
                   "missing image", on_bad_sample)
  return records


class FileSource:
  """A list of file-path records; `grain.sources.RandomAccessDataSource`-compatible and picklable."""

  def __init__(self, records: Sequence[dict[str, Any]], name: str):
    self.records = list(records)
    self.name = name

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    return dict(self.records[index], index=index)

  def __repr__(self) -> str:
    return f"FileSource({self.name}, {len(self)} records)"


def _finish(records: list[dict[str, Any]], name: str, where: str, max_dataset_size: int) -> FileSource:
  if max_dataset_size and max_dataset_size > 0:
    records = records[:max_dataset_size]
  if not records:
    raise DataError(f"{name}: no samples found in {where}. Fix: check config.data.root and that the split "
                    "has image files in the official layout.")
  return FileSource(records, name)


def coco_stuff_source(root: str, split: str, *, no_instance: bool, max_dataset_size: int = 0,
                      on_bad_sample: str = "error", portraits: bool = True) -> FileSource:
  """COCO-Stuff: ``{root}/{split}_{img,label,inst}/`` (+ optional ``*_portrait`` folders in training)."""
  kinds = ("img", "label") + (() if no_instance else ("inst",))
  lists: dict[str, list[str]] = {k: list_images(Path(root) / f"{split}_{k}") for k in kinds}
  if split == "train" and portraits:
    for k in kinds:
      extra = Path(root) / f"{split}_{k}_portrait"
      if extra.is_dir():
        lists[k] += list_images(extra)
  records = pair_files(lists["img"], lists["label"], None if no_instance else lists["inst"], stem,
                       label_dir=f"{root}/{split}_label", instance_dir=f"{root}/{split}_inst",
                       on_bad_sample=on_bad_sample)
  return _finish(records, f"coco_stuff/{split}", f"{root}/{split}_img", max_dataset_size)


def ade20k_source(root: str, split: str, *, max_dataset_size: int = 0, on_bad_sample: str = "error") -> FileSource:
  """ADE20K (ADEChallengeData2016): ``{root}/images/{training,validation}/*.jpg`` + ``annotations/…/*.png``.

  Labels keep their raw values 0..150 (the official "-1" shift is a no-op), i.e. label_nc=150 + dontcare.
  """
  sub = {"train": "training", "val": "validation"}[split]
  images = [f for f in list_images(Path(root) / "images" / sub) if f.lower().endswith(".jpg")]
  labels = [f for f in list_images(Path(root) / "annotations" / sub) if f.lower().endswith(".png")]
  records = pair_files(images, labels, None, stem, label_dir=f"{root}/annotations/{sub}",
                       on_bad_sample=on_bad_sample)
  return _finish(records, f"ade20k/{split}", f"{root}/images/{sub}", max_dataset_size)


def cityscapes_key(path: str) -> str:
  """'aachen_000000_000019_leftImg8bit.png' -> 'aachen_000000_000019' (the first three '_' fields)."""
  return "_".join(os.path.basename(path).split("_")[:3])


def cityscapes_source(root: str, split: str, *, no_instance: bool, max_dataset_size: int = 0,
                      on_bad_sample: str = "error") -> FileSource:
  """Cityscapes: ``leftImg8bit/{split}/<city>/*_leftImg8bit.png`` + ``gtFine/{split}/<city>/*_gtFine_*Ids.png``."""
  images = list_images(Path(root) / "leftImg8bit" / split, recursive=True, suffix="_leftImg8bit.png")
  gt = Path(root) / "gtFine" / split
  labels = list_images(gt, recursive=True, suffix="_gtFine_labelIds.png")
  instances = None if no_instance else list_images(gt, recursive=True, suffix="_gtFine_instanceIds.png")
  records = pair_files(images, labels, instances, cityscapes_key, label_dir=str(gt), instance_dir=str(gt),
                       on_bad_sample=on_bad_sample)
  return _finish(records, f"cityscapes/{split}", f"{root}/leftImg8bit/{split}", max_dataset_size)


def custom_dirs(data_cfg, split: str) -> tuple[str, str, str]:
  """Resolves the custom-folder paths for `split`.

  ``'{split}'`` in a path is replaced by the split name; relative paths are taken under ``root`` when it is
  set; with empty image/label dirs the demo layout ``{root}/{split}/{images,labels}`` is used.
  """
  root = data_cfg.root or ""

  def resolve(p: str, default: str) -> str:
    p = p or (default if root else "")
    if not p:
      return ""
    p = p.replace("{split}", split)
    return p if os.path.isabs(p) or not root else os.path.join(root, p)

  return (resolve(data_cfg.image_dir, "{split}/images"),
          resolve(data_cfg.label_dir, "{split}/labels"),
          resolve(data_cfg.instance_dir, ""))


def custom_source(image_dir: str, label_dir: str, instance_dir: str = "", *, no_instance: bool,
                  max_dataset_size: int = 0, on_bad_sample: str = "error", name: str = "custom") -> FileSource:
  """Custom folders paired by basename without extension; labels must be single-channel index maps."""
  if not image_dir or not label_dir:
    raise DataError("custom data set: set config.data.image_dir and config.data.label_dir (or config.data.root "
                    "for the {root}/{split}/{images,labels} layout).")
  if not no_instance and not instance_dir:
    raise DataError(f"custom data set {image_dir}: no_instance=False but config.data.instance_dir is empty. "
                    "Fix: set config.data.no_instance=True, or point instance_dir at the instance maps.")
  images = list_images(image_dir)
  labels = list_images(label_dir)
  instances = None if no_instance else list_images(instance_dir)
  records = pair_files(images, labels, instances, stem, label_dir=label_dir, instance_dir=instance_dir,
                       on_bad_sample=on_bad_sample)
  return _finish(records, name, image_dir, max_dataset_size)


# ---------------------------------------------------------------------------------------------------------
# tfds ArrayRecord sources (tensorflow_datasets is optional and only imported here, when used)

TFDS_IMAGE_KEYS = ("image", "image_left")
TFDS_LABEL_KEYS = ("segmentation_label", "annotation", "label", "segmentation", "label_map")
TFDS_INSTANCE_KEYS = ("instance", "instance_ids", "instance_map", "instance_label")
TFDS_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "test")}


def open_tfds_split(name: str, split: str, data_dir: str):
  """Opens ``tfds.data_source`` for our split name, trying the tfds spellings ('val' -> 'validation'/'test')."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError("config.data.dataset='tfds' needs tensorflow-datasets (pip install tensorflow-datasets); "
                    "or use the raw-folder loaders ('coco_stuff', 'ade20k', 'cityscapes', 'custom').") from e
  builder = tfds.builder(name, data_dir=data_dir or None)
  available = list(builder.info.splits.keys())
  for candidate in TFDS_SPLIT_NAMES.get(split, (split,)):
    if candidate in available:
      return tfds.data_source(name, split=candidate, data_dir=data_dir or None)
  raise DataError(f'tfds data set {name} in {data_dir or "the default data_dir"} has splits {available}; none '
                  f'matches {split!r}. The data set must be prepared with file_format="array_record".')


def _pick(record: dict[str, Any], keys: Sequence[str]) -> str | None:
  return next((k for k in keys if k in record), None)


class TfdsSource:
  """Maps a tfds random-access source (``tfds.data_source``) to the common record format."""

  def __init__(self, source, name: str, split: str, *, no_instance: bool, max_dataset_size: int = 0):
    self.source, self.name, self.split, self.no_instance = source, name, split, no_instance
    n = len(source)
    self._len = min(n, max_dataset_size) if max_dataset_size and max_dataset_size > 0 else n
    if self._len == 0:
      raise DataError(f"tfds {name} split {split!r} is empty.")
    if not no_instance and name.split("/")[0] == "cityscapes":
      raise DataError(f"tfds {name} has no instance maps (only gtFine_labelIds). Fix: set "
                      "config.data.no_instance=True, or use dataset='cityscapes' on the raw folders to get "
                      "the instance-edge input.")
    first = source[0]
    self.image_key, self.label_key = _pick(first, TFDS_IMAGE_KEYS), _pick(first, TFDS_LABEL_KEYS)
    self.instance_key = _pick(first, TFDS_INSTANCE_KEYS)
    if self.image_key is None or self.label_key is None:
      raise DataError(f"tfds {name}: records have features {sorted(first)}; expected an image feature "
                      f"{TFDS_IMAGE_KEYS} and a label feature {TFDS_LABEL_KEYS}.")
    if not no_instance and self.instance_key is None:
      raise DataError(f"tfds {name}: records have no instance-map feature {TFDS_INSTANCE_KEYS}. Fix: set "
                      "config.data.no_instance=True.")

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    rec = self.source[index]
    return {"image": rec[self.image_key], "label": rec[self.label_key],
            "instance": None if self.no_instance else rec[self.instance_key],
            "where": f"tfds {self.name}/{self.split}[{index}]", "index": index}

  def __repr__(self) -> str:
    return f"TfdsSource({self.name}/{self.split}, {len(self)} records)"


def tfds_source(name: str, split: str, data_dir: str = "", *, no_instance: bool, max_dataset_size: int = 0):
  return TfdsSource(open_tfds_split(name, split, data_dir), name, split, no_instance=no_instance,
                    max_dataset_size=max_dataset_size)


# ---------------------------------------------------------------------------------------------------------


def build_source(data_cfg, split: str):
  """The source for ``config.data`` and `split` ('train' | 'val'); checks folders and non-empty splits."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  ds = data_cfg.dataset
  kw = dict(max_dataset_size=int(data_cfg.max_dataset_size or 0), on_bad_sample=data_cfg.on_bad_sample)
  no_instance = bool(data_cfg.no_instance)
  if ds in ("coco_stuff", "coco"):
    return coco_stuff_source(data_cfg.root, split, no_instance=no_instance,
                             portraits=not data_cfg.coco_no_portraits, **kw)
  if ds == "ade20k":
    if not no_instance:
      raise DataError("ADE20K has no instance maps. Fix: set config.data.no_instance=True.")
    return ade20k_source(data_cfg.root, split, **kw)
  if ds == "cityscapes":
    return cityscapes_source(data_cfg.root, split, no_instance=no_instance, **kw)
  if ds == "custom":
    image_dir, label_dir, instance_dir = custom_dirs(data_cfg, split)
    return custom_source(image_dir, label_dir, instance_dir, no_instance=no_instance, name=f"custom/{split}", **kw)
  if ds == "tfds":
    return tfds_source(data_cfg.tfds_name, split, data_cfg.tfds_data_dir, no_instance=no_instance,
                       max_dataset_size=kw["max_dataset_size"])
  raise UserError(f"unknown config.data.dataset {ds!r}; use coco_stuff | ade20k | cityscapes | custom | tfds")
