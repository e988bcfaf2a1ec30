"""The evaluation protocol, shared by eval.py and periodic evaluation inside training.

`Evaluator(config, ...)` holds what does not change between evaluations (the FID Inception, the real images'
statistics, the segmenter and its score on real images); calling it with a `synthesize` function scores one
generator: FID against the real validation images and, where a segmenter exists for the data set, mIoU and pixel
accuracy of the synthesised images against their input label maps. Segmenters by data set:

  cityscapes  DRN-D-105 (fyu/drn; weights from http://go.yf.io/drn-cityscapes-models, passed as a path)
  ade20k      UperNet-101 (mit-semseg; downloaded and cached, or 'encoder.pth,decoder.pth')
  coco_stuff  DeepLabV2-ResNet101 MSC (kazuto1011/deeplab-pytorch; downloaded and cached, or a path)
  demo        a small network trained here on the real demo training images (spade_jax.evaluation.demo_segmenter)

VAE models on the demo data set are also scored for style (spade_jax.evaluation.style): each validation label map
synthesised with its own photo's style code must show the photo's recorded style (day / sunset / night), and the
styles of random-code syntheses are counted.

Every batch is padded to the fixed batch size, so each network compiles once per evaluation run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging

__all__ = ["Evaluator", "Segmenter", "build_segmenter", "SegmenterUnavailable", "eval_latents", "scalars", "write"]


def _log(msg: str) -> None:
  logging.info("%s", msg)


class SegmenterUnavailable(RuntimeError):
  """No segmentation network can be built for this data set with the given options."""


@dataclasses.dataclass
class Segmenter:
  """segment: uint8 (N, H, W, 3) -> int (N, H, W) eval ids; to_eval_ids: the generator's input labels -> eval ids
  (255 = ignored). `ceiling`: precomputed scores on real images (else computed on the evaluated real images)."""
  name: str
  num_classes: int
  segment: Callable[[np.ndarray], Any]
  to_eval_ids: Callable[[np.ndarray], np.ndarray]
  protocol: str
  weights: str
  class_names: tuple = ()
  info: dict = dataclasses.field(default_factory=dict)


def _is_demo(data_cfg) -> bool:
  return bool(data_cfg.demo_generate)


def build_segmenter(data_cfg, kind: str = "auto", weights: str = "", *, demo_steps: int | None = None,
                    log=_log) -> Segmenter | None:
  """The data set's segmenter, or None when `kind` is 'none'. Raises SegmenterUnavailable (saying what to pass)
  when the data set has none or its weights are missing."""
  import jax
  import jax.numpy as jnp
  if kind == "none":
    return None
  if kind != "auto":
    raise ValueError(f"segmenter must be 'auto' or 'none', got {kind!r}")
  dataset = str(data_cfg.dataset)
  if _is_demo(data_cfg):
    from spade_jax.evaluation import demo_segmenter as ds
    kw = {"steps": demo_steps} if demo_steps else {}
    seg, info = ds.load_or_train(data_cfg, weights or None, log=lambda m: log("eval: " + m), **kw)
    return Segmenter("demo segmenter (trained on the real demo training images)", ds.NUM_CLASSES, seg.segment,
                     lambda labels: np.asarray(labels, np.int64), ds.PROTOCOL, str(info["cache_path"]),
                     ds.CLASS_NAMES, {k: v for k, v in info.items() if k != "fingerprint"})
  if dataset == "cityscapes":
    if not weights:
      raise SegmenterUnavailable(
          "the Cityscapes segmentation score needs DRN-D-105 weights (drn-d-105_ms_cityscapes.pth from "
          "http://go.yf.io/drn-cityscapes-models): pass their path (eval.py --segmenter_weights=PATH, in training "
          "--config.eval.segmenter_weights=PATH), or skip segmentation with --segmenter=none")
    from spade_jax.evaluation import drn
    model, variables = drn.load_drn_seg(weights)
    fn = jax.jit(lambda x: jnp.argmax(model.apply(variables, drn.normalize(x)), -1))
    protocol = ("DRN-D-105 (fyu/drn DRNSeg, drn-d-105_ms_cityscapes.pth) segments each image at the generated "
                "resolution; the 35 label ids map to the 19 train ids (others 255, ignored)")
    return Segmenter("DRN-D-105", 19, fn, drn.cityscapes_label_to_train_id, protocol, str(weights),
                     drn.CITYSCAPES_TRAIN_CLASSES)
  if dataset == "ade20k":
    from spade_jax.evaluation import upernet
    paths = tuple(p for p in str(weights).split(",") if p) or None
    if paths is not None and len(paths) != 2:
      raise ValueError(f"UperNet-101 needs two files 'encoder_epoch_50.pth,decoder_epoch_50.pth', got {weights!r}")
    model, variables = upernet.load_upernet(paths)
    return Segmenter("UperNet-101", upernet.NUM_CLASSES, lambda x: upernet.segment_ade20k(model, variables, x),
                     upernet.ade20k_label_to_eval_id, upernet.PROTOCOL,
                     str(weights or "mit-semseg ade20k-resnet101-upernet epoch 50 (cache)"), upernet.ADE20K_CLASSES)
  if dataset in ("coco_stuff", "coco"):
    from spade_jax.evaluation import deeplab
    model, variables = deeplab.load_deeplab(weights or None)
    return Segmenter("DeepLabV2-ResNet101 MSC", deeplab.NUM_CLASSES,
                     lambda x: deeplab.segment_cocostuff(model, variables, x), deeplab.cocostuff_label_to_eval_id,
                     deeplab.PROTOCOL, str(weights or "deeplabv2_resnet101_msc-cocostuff164k-100000.pth (cache)"),
                     deeplab.COCO_STUFF_CLASSES)
  raise SegmenterUnavailable(f"no segmentation network for data set {dataset!r} (the paper's protocol covers "
                             "cityscapes, ade20k and coco_stuff, plus the demo); use --segmenter=none")


def eval_latents(first, n: int, z_dim: int, seed: int = 0):
  """The VAE latent of validation image i is N(0, I) drawn from fold_in(key(seed), i): independent of the batch
  size and of the program (eval.py, periodic evaluation) that synthesises it. Jittable (`first` may be traced)."""
  import jax
  import jax.numpy as jnp
  key = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (z_dim,)))(first + jnp.arange(n))


def _pad(x: np.ndarray, n: int) -> np.ndarray:
  """Pad the batch axis to n rows (repeating the last row) so jitted networks see one shape."""
  if len(x) == n:
    return x
  return np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)], 0)


class Evaluator:
  """Scores generators on a data set's validation split by the paper's protocol (see the module docstring).

  `fid` False skips FID (e.g. no Inception weights offline during training). Errors of the first call (missing
  weights) surface from the constructor, before any synthesis.
  """

  def __init__(self, config, image_size, *, inception_weights=None, fid: bool = True, segmenter: str = "auto",
               segmenter_weights: str = "", num_images: int = 0, batch_size: int = 8, fid_cache=None,
               grid_size: int = 8, demo_segmenter_steps: int | None = None, style_rounds: int = 4, log=_log):
    import jax
    import jax.numpy as jnp

    from spade_jax.data.sources import build_source
    from spade_jax.evaluation import fid as fid_lib
    from spade_jax.weights.download import cache_dir
    self.config, self.data_cfg, self.log = config, config.data, log
    self.image_size = tuple(int(s) for s in image_size)
    self.batch_size, self.grid_size = int(batch_size), int(grid_size)
    self.split_size = len(build_source(self.data_cfg, "val"))
    self.num_images = min(self.split_size, num_images) if num_images else self.split_size
    if self.num_images < 2:
      raise ValueError(f"evaluation needs at least 2 validation images; the val split of {self.data_cfg.root} "
                       f"has {self.split_size}")
    h, w = self.image_size
    self.extract, self.inception_desc, self.real_fid, self.cache_path = None, None, None, None
    self.meaningful = inception_weights != "random"
    if fid:
      from spade_jax.evaluation.inception import FIDInceptionV3, load_fid_inception
      if inception_weights == "random":
        model = FIDInceptionV3()
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
        self.inception_desc = "random (smoke test)"
      else:
        model, variables = load_fid_inception(inception_weights)
        self.inception_desc = str(inception_weights or "pt_inception-2015-12-05-6726825d.pth (cache)")
      self.extract = fid_lib.feature_extractor(model, variables)
      key = json.dumps({"dataset": str(self.data_cfg.dataset),
                        "root": str(pathlib.Path(str(self.data_cfg.root)).absolute()), "split": "val",
                        "size": [h, w], "n": self.num_images, "preprocess": str(self.data_cfg.preprocess),
                        "weights": self.inception_desc}, sort_keys=True)
      self.cache_key = key
      self.cache_path = pathlib.Path(fid_cache or cache_dir() / "fid_stats") / (
          f"{self.data_cfg.dataset}_val_{h}x{w}_n{self.num_images}_"
          f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz")
      if self.meaningful:
        self.real_fid = fid_lib.load_stats(self.cache_path, key=key)
    self.real_fid_from_cache = self.real_fid is not None
    self.segmenter = build_segmenter(self.data_cfg, segmenter, segmenter_weights, demo_steps=demo_segmenter_steps,
                                     log=log)
    self.real_seg = None  # the segmenter's scores on the real images (computed on the first run)
    self.style_judge, self.val_styles, self.style_skipped = None, None, None
    self.style_rounds = max(1, int(style_rounds))
    if _is_demo(self.data_cfg):
      self._init_style(config)

  def _init_style(self, config):
    """The demo's style judge and the validation images' recorded styles (VAE models only)."""
    if not config.model.use_vae:
      self.style_skipped = "the model has no VAE encoder (use_vae=False): its style is not an input"
      return
    from spade_jax.evaluation import style as style_lib
    try:
      self.val_styles = style_lib.read_styles(self.data_cfg, "val")[:self.num_images]
      self.style_judge = style_lib.build_judge(self.data_cfg)
    except ValueError as e:
      self.style_skipped = str(e)
      self.log(f"eval: no style scores: {e}")

  def _batches(self):
    from spade_jax.data import make_dataset
    done = 0
    for batch in make_dataset(self.data_cfg, split="val", batch_size=self.batch_size, seed=0, train=False):
      if done >= self.num_images:
        return
      k = min(len(batch["label"]), self.num_images - done)
      yield done, k, batch
      done += k

  def __call__(self, synthesize: Callable, step: int | None = None) -> tuple[dict, np.ndarray]:
    """synthesize(labels int32 (B, H, W), instances int32 (B, H, W) or None, first_index) -> uint8 (B, H, W, 3);
    B is always the evaluator's batch size (the tail is padded). VAE models draw z per image index (see
    `eval_latents`); for the demo's style scores they are also called with `style=` uint8 (B, H, W, 3) real images,
    whose encoder means (z = mu) replace the random codes. Returns (report, grid image)."""
    from spade_jax.evaluation import fid as fid_lib
    from spade_jax.evaluation.metrics import ConfusionMatrix
    from spade_jax.images import colorize_labels, sample_grid
    from spade_jax.progress import Progress
    t0 = time.time()
    h, w = self.image_size
    bs = self.batch_size
    fake_stats = fid_lib.FeatureStats()
    real_stats = fid_lib.FeatureStats() if (self.extract is not None and self.real_fid is None) else None
    seg, real_cm = None, None
    if self.segmenter is not None:
      seg = ConfusionMatrix(self.segmenter.num_classes)
      real_cm = ConfusionMatrix(self.segmenter.num_classes) if self.real_seg is None else None
    rows = {"label": [], "fake": [], "real": []}
    styles = None
    if self.style_judge is not None:
      from spade_jax.evaluation import style as style_lib
      styles = style_lib.StyleScores()
    progress = Progress(-(-self.num_images // bs), every_secs=10.0, smoothing_secs=20.0,
                        log=lambda line: self.log("eval: " + line))
    for i, (first, k, batch) in enumerate(self._batches()):
      labels = np.asarray(batch["label"][:k])
      if labels.shape[1:] != (h, w):
        raise ValueError(f"validation label maps are {labels.shape[1:]} but the generator makes {h}x{w}: the "
                         "evaluation config's data options (crop_size, aspect_ratio, preprocess) must match the "
                         "training run's")
      real = ((np.asarray(batch["image"][:k], np.float32) + 1) / 2 * 255).round().clip(0, 255).astype(np.uint8)
      inst = np.asarray(batch["instance"][:k]) if "instance" in batch else None
      fake = np.asarray(synthesize(_pad(labels, bs), None if inst is None else _pad(inst, bs), first))[:k]
      if self.extract is not None:
        fake_stats.update(np.asarray(self.extract(_pad(fake, bs)))[:k])
        if real_stats is not None:
          real_stats.update(np.asarray(self.extract(_pad(real, bs)))[:k])
      if seg is not None:
        gt = self.segmenter.to_eval_ids(labels)
        seg.update(gt, np.asarray(self.segmenter.segment(_pad(fake, bs)))[:k])
        if real_cm is not None:
          real_cm.update(gt, np.asarray(self.segmenter.segment(_pad(real, bs)))[:k])
      if styles is not None:
        self._score_styles(styles, synthesize, labels, inst, real, fake, first)
      if len(rows["fake"]) < self.grid_size:
        m = self.grid_size - len(rows["fake"])
        rows["label"] += list(labels[:m])
        rows["fake"] += list(fake[:m])
        rows["real"] += list(real[:m])
      progress.update(i + 1, images_per_step=bs)

    report: dict[str, Any] = {
        "step": step,
        "data": {"dataset": str(self.data_cfg.dataset), "root": str(self.data_cfg.root), "split": "val",
                 "num_images": self.num_images, "split_size": self.split_size, "resolution": [h, w]},
        "fid": None, "segmentation": None}
    if self.extract is not None:
      if real_stats is not None:
        self.real_fid = real_stats.mu_sigma()
        if self.meaningful:
          fid_lib.save_stats(self.cache_path, *self.real_fid, key=self.cache_key)
      report["fid"] = fid_lib.frechet_distance(*fake_stats.mu_sigma(), *self.real_fid)
      report["fid_protocol"] = {
          "implementation": "pytorch-fid (mseitzer) reimplemented in Flax: FID Inception v3, pool3 2048-d",
          "weights": self.inception_desc, "meaningful": self.meaningful,
          "generated": "one synthesis per validation label map at the training resolution (VAE models: z drawn "
                       "per image from seed 0), uint8 (tensor2im truncation) / 255",
          "real": "validation images through the data pipeline at the same resolution (uint8 / 255)",
          "inception_input": "bilinear resize to 299x299 (align_corners=False, no antialias), then 2x - 1",
          "statistics": "float64 mean and unbiased covariance; sqrtm with 1e-6 I fallback when singular",
          "real_stats_cache": str(self.cache_path) if self.meaningful else None,
          "real_stats_from_cache": self.real_fid_from_cache}
      self.real_fid_from_cache = True  # later calls of this evaluator reuse the statistics
    else:
      report["fid_skipped"] = "FID disabled"
    if seg is not None:
      if real_cm is not None:
        self.real_seg = real_cm.scores()
      s = seg.scores()
      report["segmentation"] = {
          "network": self.segmenter.name, "weights": self.segmenter.weights, "protocol": self.segmenter.protocol,
          "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"], "mean_accuracy": s["mean_accuracy"],
          "per_class_iou": dict(zip(self.segmenter.class_names, s["per_class_iou"])) if self.segmenter.class_names
          else s["per_class_iou"],
          "real_images": {"miou": self.real_seg["miou"], "pixel_accuracy": self.real_seg["pixel_accuracy"],
                          "meaning": "the same segmenter on the real validation images: the ceiling"},
          "mean": "mean IoU over classes present in the ground truth or the prediction; one dataset-level "
                  "confusion matrix; ground-truth pixels labelled 255 are ignored"}
    else:
      report["segmentation_skipped"] = "segmentation disabled (--segmenter=none)"
    if styles is not None:
      report["style"] = {"judge": "colour rule (nearest centroid, fitted on the real demo training images)",
                         "protocol": style_lib.PROTOCOL, "random_code_rounds": self.style_rounds,
                         "centroids": self.style_judge.describe(), **styles.scores()}
    elif self.style_skipped:
      report["style_skipped"] = self.style_skipped
    report["seconds"] = round(time.time() - t0, 2)
    grid = sample_grid(colorize_labels(np.stack(rows["label"]), self.data_cfg), np.stack(rows["fake"]),
                       np.stack(rows["real"]))
    return report, grid

  def _score_styles(self, styles, synthesize, labels, inst, real, fake, first):
    """One batch of the style scores: own-style synthesis, the real images, and `style_rounds` random codes."""
    from spade_jax.evaluation.style import features
    judge, k, bs = self.style_judge, len(labels), self.batch_size
    true = self.val_styles[first:first + k]
    pl, pi = _pad(labels, bs), None if inst is None else _pad(inst, bs)
    own = np.asarray(synthesize(pl, pi, first, style=_pad(real, bs)))[:k]
    styles.update_guided(true, judge.classify(own, labels), features(own, labels))
    styles.update_real(true, judge.classify(real, labels), features(real, labels))
    styles.update_random(judge.classify(fake, labels))
    for r in range(1, self.style_rounds):  # more random codes per label map: index i + r * num_images
      more = np.asarray(synthesize(pl, pi, first + r * self.num_images))[:k]
      styles.update_random(judge.classify(more, labels))


def scalars(report: dict) -> dict:
  """The report's headline numbers as TensorBoard / metrics.jsonl scalars."""
  out = {}
  if report.get("fid") is not None:
    out["eval/fid"] = report["fid"]
  if report.get("segmentation"):
    s = report["segmentation"]
    out.update({"eval/miou": s["miou"], "eval/pixel_accuracy": s["pixel_accuracy"],
                "eval/miou_real": s["real_images"]["miou"]})
  if report.get("style"):
    s = report["style"]
    out["eval/style_accuracy"] = s["accuracy"]
    out["eval/style_accuracy_real"] = s["real_images"]["accuracy"]
    out.update({f"eval/style_share_{k}": v for k, v in s["random_code_shares"].items() if v is not None})
  return out


def write(report: dict, grid: np.ndarray, out_dir) -> pathlib.Path:
  """report.json and grid.png into out_dir (created)."""
  from PIL import Image
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  Image.fromarray(grid).save(out / "grid.png")
  (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
  return out
