"""Evaluate a checkpoint: FID (pytorch-fid protocol) and segmentation mIoU / pixel accuracy, as in the paper.

  python eval.py --workdir=runs/cityscapes [--checkpoint=STEP] [--config=configs/cityscapes.py] \
      [--inception_weights=PATH] [--segmenter_weights=drn-d-105_ms_cityscapes.pth] [--num_images=N] [--batch_size=8]

Protocol (spade_jax.evaluation.protocol; written into the JSON report): one synthesis per validation label map, at the
training resolution (file order, no flip; VAE models draw z per image from seed 0, as the official test draws a
random z), with the EMA weights when the run kept them; synthesised images are truncated to uint8 like saved PNGs;
real images are the validation images through the same pipeline (resized to the same size). FID as pytorch-fid
(uint8 / 255, bilinear 299 without antialias, 2x-1, pool3 2048-d, float64 statistics, sqrtm fallback); real
statistics are cached per data set, split, resolution and image count. Segmentation of the synthesised images
against their input label maps: DRN-D-105 (Cityscapes, weights by path), UperNet-101 (ADE20K) and DeepLabV2
(COCO-Stuff), downloaded and cached, and for the demo a small segmenter trained on its real images; the same
segmenter's score on the real images is reported as the ceiling.

Writes DIR/eval/step_<N>/report.json, grid.png and TensorBoard scalars/images (eval/fid, eval/miou, ...), unless
--out is given. The options are the config's `eval` section (the checkpoint's own, or --config's with
--config.eval.x=v overrides); the flags below that name an eval key override it. `--inception_weights=random`
runs the pipeline with untrained weights (smoke tests only: the FID is then meaningless and the report says so);
`--nofid` skips FID. `--config=configs/X.py` replaces the checkpoint's
config for the evaluation (e.g. another data.root), with `--config.x.y=v` overrides as in train.py. A user error (no
checkpoint in the workdir, a missing data folder) ends with one `error: ...` line; --verbosity=1 shows its traceback
and the INFO lines of Orbax / JAX, hidden by default.

Multi-host (the same command on every host, or `python -m spade_jax.launch`): each process synthesises its share of
every batch, and process 0 writes the report.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (or a checkpoints folder / one step's folder).")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the latest).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py) that replaces the checkpoint's "
                                          "config (e.g. another data.root); --config.x.y=v overrides it.",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/eval/step_<N>).")
# Shorthands for config.eval keys (default: the config's value); config.validate checks what they are given.
_EVAL_FLAGS = {key: define(key, None, f"eval.{key}: {text}") for key, define, text in [
    ("inception_weights", flags.DEFINE_string, "pt_inception-2015-12-05-6726825d.pth (default: the cached / "
     "downloaded copy), or 'random' for smoke tests."),
    ("fid", flags.DEFINE_bool, "compute FID (needs the Inception weights); --nofid: segmentation only."),
    ("segmenter", flags.DEFINE_string, "auto (the data set's network) or none."),
    ("segmenter_weights", flags.DEFINE_string, "DRN-D-105 .pth (Cityscapes; required there), "
     "'encoder.pth,decoder.pth' (ADE20K) or the DeepLabV2 .pth (COCO-Stuff); default: the cached / downloaded "
     "official files."),
    ("use_ema", flags.DEFINE_bool, "the EMA generator weights when the checkpoint has them."),
    ("demo_segmenter_steps", flags.DEFINE_integer, "training steps of the demo segmenter (0: default)."),
    ("num_images", flags.DEFINE_integer, "only the first N validation images (0: all)."),
    ("batch_size", flags.DEFINE_integer, "images per synthesis / network batch."),
    ("grid_size", flags.DEFINE_integer, "samples in grid.png (label | synthesis | real)."),
    ("fid_cache", flags.DEFINE_string, "folder for cached real statistics (default: <weights cache>/fid_stats)."),
]}
_DRN = flags.DEFINE_string("drn_weights", None, "Alias of --segmenter_weights for Cityscapes.")


def main(argv):
  del argv
  from spade_jax import cli
  if _DRN.value and _EVAL_FLAGS["segmenter_weights"].value not in (None, _DRN.value):
    cli.fail("give --segmenter_weights or --drn_weights, not both")
  cli.quiet_libraries()
  with cli.user_errors():
    from spade_jax import parallel
    from spade_jax.evaluation.run import evaluate_checkpoint
    overrides = {f"eval.{k}": f.value for k, f in _EVAL_FLAGS.items() if f.value is not None}
    if _DRN.value:
      overrides["eval.segmenter_weights"] = _DRN.value
    parallel.maybe_initialize_distributed()  # one of several processes: each synthesises its share
    with parallel.fail_fast():
      evaluate_checkpoint(_WORKDIR.value, step=_CHECKPOINT.value, config=_CONFIG.value, overrides=overrides,
                          out=_OUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  from spade_jax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
