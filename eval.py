"""Evaluate a checkpoint: FID (pytorch-fid protocol) and segmentation mIoU / pixel accuracy, as in the paper.

  python eval.py --workdir=runs/cityscapes [--checkpoint=STEP] [--config=configs/cityscapes.py] \
      [--inception_weights=PATH] [--segmenter_weights=drn-d-105_ms_cityscapes.pth] [--num_images=N] [--batch_size=8]

Protocol (spade_jax.evaluation.runner; written into the JSON report): one synthesis per validation label map, at the
training resolution (file order, no flip; VAE models draw z per image from seed 0, as the official test draws a
random z), with the EMA weights when the run kept them; synthesised images are truncated to uint8 like saved PNGs;
real images are the validation images through the same pipeline (resized to the same size). FID as pytorch-fid
(uint8 / 255, bilinear 299 without antialias, 2x-1, pool3 2048-d, float64 statistics, sqrtm fallback); real
statistics are cached per data set, split, resolution and image count. Segmentation of the synthesised images
against their input label maps: DRN-D-105 (Cityscapes, weights by path), UperNet-101 (ADE20K) and DeepLabV2
(COCO-Stuff), downloaded and cached, and for the demo a small segmenter trained on its real images; the same
segmenter's score on the real images is reported as the ceiling.

Writes DIR/eval/step_<N>/report.json, grid.png and TensorBoard scalars/images (eval/fid, eval/miou, ...), unless
--out is given. `--inception_weights=random` runs the pipeline with untrained weights (smoke tests only: the FID
is then meaningless and the report says so); `--nofid` skips FID. `--config=configs/X.py` replaces the checkpoint's
config for the evaluation (e.g. another data.root), with `--config.x.y=v` overrides as in train.py. A user error (no
checkpoint in the workdir, a missing data folder) ends with one `error: ...` line; --verbosity=1 shows its traceback
and the INFO lines of Orbax / JAX, hidden by default.

Multi-host (the same command on every host, or `python -m spade_jax.launch`): each process synthesises its share of
every batch, and process 0 writes the report.
"""
from __future__ import annotations

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (or a checkpoints folder / one step's folder).")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the latest).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py) that replaces the checkpoint's "
                                          "config (e.g. another data.root); --config.x.y=v overrides it.",
                                          lock_config=True)
_INCEPTION = flags.DEFINE_string("inception_weights", None, "pt_inception-2015-12-05-6726825d.pth (default: the "
                                 "cached / downloaded copy), or 'random' for smoke tests.")
_FID = flags.DEFINE_bool("fid", True, "Compute FID (needs the Inception weights); --nofid: segmentation only.")
_SEGMENTER = flags.DEFINE_enum("segmenter", "auto", ["auto", "none"], "Segmentation score: the data set's "
                                "network (auto) or none.")
_SEG_WEIGHTS = flags.DEFINE_string("segmenter_weights", None, "DRN-D-105 .pth (Cityscapes; required there), "
                                   "'encoder.pth,decoder.pth' (ADE20K) or the DeepLabV2 .pth (COCO-Stuff); default: "
                                   "the cached / downloaded official files.")
_DRN = flags.DEFINE_string("drn_weights", None, "Alias of --segmenter_weights for Cityscapes.")
_EMA = flags.DEFINE_bool("use_ema", True, "Use the EMA generator weights when the checkpoint has them.")
_DEMO_STEPS = flags.DEFINE_integer("demo_segmenter_steps", 0, "Training steps of the demo segmenter (0: default).")
_NUM = flags.DEFINE_integer("num_images", 0, "Evaluate only the first N validation images (0: all).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per synthesis / network batch.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/eval/step_<N>).")
_GRID = flags.DEFINE_integer("grid_size", 8, "Samples in grid.png (label | synthesis | real).")
_FID_CACHE = flags.DEFINE_string("fid_cache", None,
                                 "Folder for cached real statistics (default: <weights cache>/fid_stats).")


def _log(msg):
  logging.info("%s", msg)


def synthesize_fn(syn, seed: int = 0):
  """Evaluator-style synthesis with a Synthesizer: VAE models get z drawn per image index from `seed`, or the
  encoder's mean of `style` images (the demo's style scores)."""
  import numpy as np

  from spade_jax.evaluation.runner import eval_latents

  def run(labels, instances, first, style=None):
    instances = instances if not syn.no_instance else None
    if style is not None:
      return syn.synthesize(labels, instances=instances, style=list(style))
    z = np.asarray(eval_latents(first, len(labels), syn.generator.z_dim, seed)) if syn.use_vae else None
    return syn.synthesize(labels, instances=instances, z=z)
  return run


def share_over_processes(run):
  """Several processes (a multi-host job): each synthesises its contiguous share of every batch (VAE codes follow
  the image index, so the split changes nothing) and the shares are gathered on all of them. One process: `run`."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return run

  def shared(labels, instances, first, style=None):
    n, count, i = len(labels), jax.process_count(), jax.process_index()
    lo, hi = i * n // count, (i + 1) * n // count
    kw = {} if style is None else {"style": style[lo:hi]}
    part = np.asarray(run(labels[lo:hi], None if instances is None else instances[lo:hi], first + lo, **kw))
    return np.asarray(multihost_utils.process_allgather(part, tiled=True))
  return shared


def evaluate(workdir, *, step=None, config_path=None, inception_weights=None, fid=True, segmenter="auto",
             segmenter_weights=None, num_images=0, batch_size=8, out=None, grid_size=8, fid_cache=None,
             use_ema=True, demo_segmenter_steps=0, config=None) -> dict:
  """Evaluates a checkpoint and writes the report; `config` (a ConfigDict) or `config_path` (a config file) replaces
  the checkpoint's config."""
  import jax

  import spade_jax.inference
  from spade_jax import checkpoints, parallel
  from spade_jax import config as spade_config
  from spade_jax.errors import UserError
  from spade_jax.evaluation import runner
  from spade_jax.training.writer import MetricWriter

  if config is None and config_path:
    config = spade_config.from_file(config_path)
  if config is not None:  # checked against the checkpoint's own config before any weights are read
    spade_config.validate(config)
    ckdir, ckstep = checkpoints.resolve_checkpoint(workdir, step)
    saved = spade_config.from_dict(checkpoints.read_config_dir(ckdir, ckstep))
    mismatch = spade_config.state_mismatch(saved, config, ckdir.parent, keys=spade_config.SYNTHESIS_KEYS,
                                           remedy="or leave out --config (the checkpoint's own config is used)")
    if mismatch:
      raise UserError(mismatch)
  syn = spade_jax.inference.load(workdir, step, use_ema=use_ema)
  config = config if config is not None else syn.config
  h, w = syn.image_size
  out = pathlib.Path(out or pathlib.Path(workdir) / "eval" / f"step_{syn.step}")
  batch_size = -(-batch_size // jax.process_count()) * jax.process_count()  # equal shares per process
  with parallel.main_process_first("evaluator"):  # process 0 trains / downloads and caches, the others load
    evaluator = runner.Evaluator(config, (h, w), inception_weights=inception_weights, fid=fid, segmenter=segmenter,
                                 segmenter_weights=segmenter_weights or "", num_images=num_images,
                                 batch_size=batch_size, fid_cache=fid_cache, grid_size=grid_size,
                                 demo_segmenter_steps=demo_segmenter_steps or None, log=_log)
  _log(f"eval: step {syn.step} ({syn.weights} weights), {evaluator.num_images} of {evaluator.split_size} "
       f"validation images at {h}x{w}, output {out}")
  report, grid = evaluator(share_over_processes(synthesize_fn(syn)), syn.step)
  report["checkpoint"] = {"source": syn.source, "step": syn.step, "weights": syn.weights}
  if jax.process_index() == 0:  # every process has the whole report; one writes it
    runner.write(report, grid, out)
    with MetricWriter(str(out / "logs")) as writer:
      writer.write_scalars(int(syn.step or 0), runner.scalars(report))
      writer.write_images(int(syn.step or 0), {"eval/grid": grid})
  seg = report.get("segmentation")
  _log(f"eval: FID {report['fid']:.4f}" if report.get("fid") is not None else "eval: no FID")
  if seg:
    _log(f"eval: {seg['network']}: mIoU {seg['miou']:.4f}, pixel accuracy {seg['pixel_accuracy']:.4f} (real images: "
         f"{seg['real_images']['miou']:.4f} / {seg['real_images']['pixel_accuracy']:.4f})")
  _log(f"eval: {report['data']['num_images']} images in {report['seconds']:.0f}s; report {out / 'report.json'}")
  return report


def main(argv):
  del argv
  from spade_jax import cli
  if _DRN.value and _SEG_WEIGHTS.value and _DRN.value != _SEG_WEIGHTS.value:
    cli.fail("give --segmenter_weights or --drn_weights, not both")
  cli.quiet_libraries()
  with cli.user_errors():
    from spade_jax import parallel
    parallel.maybe_initialize_distributed()  # one of several processes: each synthesises its share
    with parallel.fail_fast():
      evaluate(_WORKDIR.value, step=_CHECKPOINT.value, config=_CONFIG.value, inception_weights=_INCEPTION.value,
               fid=_FID.value, segmenter=_SEGMENTER.value, segmenter_weights=_SEG_WEIGHTS.value or _DRN.value,
               num_images=_NUM.value, batch_size=_BATCH.value, out=_OUT.value, grid_size=_GRID.value,
               fid_cache=_FID_CACHE.value, use_ema=_EMA.value, demo_segmenter_steps=_DEMO_STEPS.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  from spade_jax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
