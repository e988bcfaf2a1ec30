"""Evaluate a checkpoint: FID (pytorch-fid protocol) and, for Cityscapes, DRN-D-105 mIoU / pixel accuracy.

  python eval.py --workdir=runs/cityscapes [--checkpoint=STEP] [--config=configs/cityscapes.py] \
      [--inception_weights=PATH] [--drn_weights=drn-d-105_ms_cityscapes.pth] [--num_images=N] [--batch_size=8]

Protocol (written into the JSON report): one synthesis per validation label map, at the training resolution
(file order, no flip, seed 0 for VAE models); synthesised images are truncated to uint8 like saved PNGs; real
images are the validation images through the same pipeline (resized to the same size). Both go through the
FID Inception exactly as pytorch-fid (uint8 / 255, bilinear 299 without antialias, 2x-1, pool3 2048-d), statistics
in float64, Frechet distance with pytorch-fid's sqrtm fallback. Real statistics are cached per data set, split,
resolution and image count. Segmentation (Cityscapes, with --drn_weights): DRN-D-105 segments each image at the
generated resolution; the 35 label ids are mapped to the 19 train ids (others 255, ignored); one dataset-level
confusion matrix gives mIoU (classes absent from both ground truth and prediction excluded) and pixel accuracy;
the same score on the real images is reported as the ceiling.

Writes DIR/eval/step_<N>/report.json, grid.png and TensorBoard scalars/images (eval/fid, eval/miou, ...), unless
--out is given. `--inception_weights=random` runs the pipeline with untrained weights (smoke tests only: the FID
is then meaningless and the report says so).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (or a checkpoints folder / one step's folder).")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the latest).")
_CONFIG = flags.DEFINE_string("config", None, "Config file whose `data` replaces the checkpoint's (e.g. data.root).")
_INCEPTION = flags.DEFINE_string("inception_weights", None, "pt_inception-2015-12-05-6726825d.pth (default: the "
                                 "cached / downloaded copy), or 'random' for smoke tests.")
_DRN = flags.DEFINE_string("drn_weights", None, "drn-d-105_ms_cityscapes.pth, for the Cityscapes segmentation score.")
_NUM = flags.DEFINE_integer("num_images", 0, "Evaluate only the first N validation images (0: all).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per synthesis / network batch.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/eval/step_<N>).")
_GRID = flags.DEFINE_integer("grid_size", 8, "Samples in grid.png (label | synthesis | real).")
_FID_CACHE = flags.DEFINE_string("fid_cache", None, "Folder for cached real statistics (default: <weights cache>/fid_stats).")


def _log(msg):
  sys.stderr.write(msg + "\n")
  sys.stderr.flush()


def _inception(weights):
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from spade_jax.evaluation.inception import FIDInceptionV3, load_fid_inception  # noqa: PLC0415
  if weights == "random":
    model = FIDInceptionV3()
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3))), "random (smoke test)"
  model, variables = load_fid_inception(weights)
  return model, variables, str(weights or "pt_inception-2015-12-05-6726825d.pth (cache)")


def evaluate(workdir, *, step=None, config_path=None, inception_weights=None, drn_weights=None, num_images=0,
             batch_size=8, out=None, grid_size=8, fid_cache=None) -> dict:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415

  import spade_jax.inference  # noqa: PLC0415
  from spade_jax.data import make_dataset  # noqa: PLC0415
  from spade_jax.data.sources import build_source  # noqa: PLC0415
  from spade_jax.evaluation import fid as fid_lib  # noqa: PLC0415
  from spade_jax.evaluation.metrics import ConfusionMatrix  # noqa: PLC0415
  from spade_jax.training.writer import MetricWriter, Progress, sample_grid  # noqa: PLC0415
  from spade_jax.weights.download import cache_dir  # noqa: PLC0415

  t_start = time.time()
  syn = spade_jax.inference.load(workdir, step)
  config = syn.config
  if config_path:
    import importlib.util  # noqa: PLC0415
    spec = importlib.util.spec_from_file_location("eval_config", config_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
  data_cfg = config.data
  n_total = len(build_source(data_cfg, "val"))
  n = min(n_total, num_images) if num_images else n_total
  h, w = syn.image_size
  out = pathlib.Path(out or pathlib.Path(workdir) / "eval" / f"step_{syn.step}")
  out.mkdir(parents=True, exist_ok=True)
  _log(f"eval: step {syn.step}, {n} of {n_total} validation images at {h}x{w}, output {out}")

  model, variables, inc_desc = _inception(inception_weights)
  extract = fid_lib.feature_extractor(model, variables)
  cache_key = json.dumps({"dataset": str(data_cfg.dataset), "root": str(pathlib.Path(str(data_cfg.root)).absolute()),
                          "split": "val", "size": [h, w], "n": n, "preprocess": str(data_cfg.get("preprocess", "")),
                          "weights": inc_desc}, sort_keys=True)
  cache_path = pathlib.Path(fid_cache or cache_dir() / "fid_stats") / (
      f"{data_cfg.dataset}_val_{h}x{w}_n{n}_{hashlib.sha256(cache_key.encode()).hexdigest()[:12]}.npz")
  real_cached = fid_lib.load_stats(cache_path, key=cache_key) if inception_weights != "random" else None

  seg = None
  if drn_weights:
    if str(data_cfg.dataset) != "cityscapes":
      raise ValueError(f"--drn_weights scores Cityscapes (19 train ids); this data set is {data_cfg.dataset}")
    from spade_jax.evaluation import drn as drn_lib  # noqa: PLC0415
    drn_model, drn_vars = drn_lib.load_drn_seg(drn_weights)
    segment = jax.jit(lambda x: jnp.argmax(drn_model.apply(drn_vars, drn_lib.normalize(x)), -1))
    seg = {"fake": ConfusionMatrix(19), "real": ConfusionMatrix(19)}

  fake_stats, real_stats = fid_lib.FeatureStats(), fid_lib.FeatureStats()
  grid_rows = {"label": [], "fake": [], "real": []}
  ds = make_dataset(data_cfg, split="val", batch_size=batch_size, seed=0, train=False)
  progress = Progress(-(-n // batch_size), every_secs=5.0, smoothing_secs=20.0)
  done, batches = 0, 0
  for batch in ds:
    if done >= n:
      break
    k = min(len(batch["label"]), n - done)
    labels = np.asarray(batch["label"][:k])
    real = ((np.asarray(batch["image"][:k], np.float32) + 1) / 2 * 255).round().clip(0, 255).astype(np.uint8)
    inst = np.asarray(batch["instance"][:k]) if "instance" in batch and not syn.no_instance else None
    fake = syn.synthesize(labels, instances=inst, seed=0)
    fake_stats.update(np.asarray(extract(fake)))
    if real_cached is None:
      real_stats.update(np.asarray(extract(real)))
    if seg is not None:
      gt = drn_lib.cityscapes_label_to_train_id(labels)
      seg["fake"].update(gt, np.asarray(segment(fake)))
      seg["real"].update(gt, np.asarray(segment(real)))
    if len(grid_rows["fake"]) < grid_size:
      m = grid_size - len(grid_rows["fake"])
      grid_rows["label"] += list(syn.colorize(labels[:m]))
      grid_rows["fake"] += list(fake[:m])
      grid_rows["real"] += list(real[:m])
    done += k
    batches += 1
    line = progress.update(batches, images_per_step=batch_size)
    if line:
      _log("eval: " + line)
  if done < 2:
    raise ValueError(f"FID needs at least 2 images, evaluated {done}")

  if real_cached is None:
    real_mu, real_sigma = real_stats.mu_sigma()
    if inception_weights != "random":
      fid_lib.save_stats(cache_path, real_mu, real_sigma, key=cache_key)
  else:
    real_mu, real_sigma = real_cached
  fid = fid_lib.frechet_distance(*fake_stats.mu_sigma(), real_mu, real_sigma)

  report = {
      "checkpoint": {"source": syn.source, "step": syn.step},
      "data": {"dataset": str(data_cfg.dataset), "root": str(data_cfg.root), "split": "val", "num_images": done,
               "split_size": n_total, "resolution": [h, w]},
      "fid": fid,
      "fid_protocol": {
          "implementation": "pytorch-fid (mseitzer) reimplemented in Flax: FID Inception v3, pool3 2048-d",
          "weights": inc_desc, "meaningful": inception_weights != "random",
          "generated": "one synthesis per validation label map at the training resolution, seed 0, uint8 "
                       "(tensor2im truncation) / 255",
          "real": "validation images through the data pipeline at the same resolution (uint8 / 255)",
          "inception_input": "bilinear resize to 299x299 (align_corners=False, no antialias), then 2x - 1",
          "statistics": "float64 mean and unbiased covariance; sqrtm with 1e-6 I fallback when singular",
          "real_stats_cache": str(cache_path) if inception_weights != "random" else None,
          "real_stats_from_cache": real_cached is not None,
      },
      "segmentation": None,
      "seconds": round(time.time() - t_start, 2),
  }
  if seg is not None:
    s_fake, s_real = seg["fake"].scores(), seg["real"].scores()
    report["segmentation"] = {
        "network": "DRN-D-105 (fyu/drn, drn-d-105_ms_cityscapes.pth)", "weights": str(drn_weights),
        "resolution": f"segmented at the generated resolution {h}x{w}; labels at the same size (pipeline NEAREST)",
        "labels": "35 Cityscapes label ids -> 19 train ids, others 255 (ignored)",
        "miou": s_fake["miou"], "pixel_accuracy": s_fake["pixel_accuracy"], "per_class_iou": s_fake["per_class_iou"],
        "real_images": {"miou": s_real["miou"], "pixel_accuracy": s_real["pixel_accuracy"]},
        "mean": "mean IoU over classes present in ground truth or prediction (DRN's nanmean)"}
  else:
    report["segmentation_skipped"] = ("no segmenter for this data set yet (DRN-D-105 for Cityscapes with "
                                      "--drn_weights; UperNet / DeepLabV2 are not ported)")

  grid = sample_grid(np.stack(grid_rows["label"]), np.stack(grid_rows["fake"]), np.stack(grid_rows["real"]))
  Image.fromarray(grid).save(out / "grid.png")
  (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
  scalars = {"eval/fid": fid}
  if seg is not None:
    scalars.update({"eval/miou": report["segmentation"]["miou"],
                    "eval/pixel_accuracy": report["segmentation"]["pixel_accuracy"]})
  with MetricWriter(str(out / "logs")) as writer:
    writer.write_scalars(int(syn.step or 0), scalars)
    writer.write_images(int(syn.step or 0), {"eval/grid": grid})
  _log(f"eval: FID {fid:.4f} over {done} images ({report['seconds']:.0f}s); report {out / 'report.json'}")
  return report


def main(argv):
  del argv
  evaluate(_WORKDIR.value, step=_CHECKPOINT.value, config_path=_CONFIG.value, inception_weights=_INCEPTION.value,
           drn_weights=_DRN.value, num_images=_NUM.value, batch_size=_BATCH.value, out=_OUT.value,
           grid_size=_GRID.value, fid_cache=_FID_CACHE.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
