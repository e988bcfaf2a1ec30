"""Evaluating a generator and writing what was found: the one path of eval.py and of evaluation during training.

`Evaluation(config, image_size)` builds the protocol's networks from `config.eval` once (spade_jax.evaluation.protocol)
and, called with a `synthesize` function, scores it and writes report.json, grid.png, the scalars and the grid
image; on the demo it keeps the style scores of every call, so a training run's report shows them over training.
`evaluate_checkpoint` is eval.py: a checkpoint's synthesizer, each process synthesising its share of every batch.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
from absl import logging

from spade_jax.evaluation import protocol

__all__ = ["Evaluation", "evaluate_checkpoint", "share_over_processes", "summary", "synthesize_fn"]


def _log(msg: str) -> None:
  logging.info("%s", msg)


class Evaluation:
  """The protocol's networks for `config` (its `eval` section) at the generator's `image_size`; the batch is
  rounded up to a multiple of `devices` and of the process count (equal shares per device and process)."""

  def __init__(self, config, image_size, *, devices: int = 1, log=_log):
    import jax

    from spade_jax import parallel
    e, self.log = config.eval, log
    multiple = int(np.lcm(max(1, devices), jax.process_count()))
    batch_size = -(-int(e.batch_size) // multiple) * multiple
    with parallel.main_process_first("evaluator"):  # process 0 trains / downloads and caches, the others load
      self.evaluator = protocol.Evaluator(
          config, image_size, inception_weights=e.inception_weights or None, fid=e.fid, segmenter=e.segmenter,
          segmenter_weights=e.segmenter_weights, num_images=e.num_images, batch_size=batch_size,
          fid_cache=e.fid_cache or None, grid_size=e.grid_size, demo_segmenter_steps=e.demo_segmenter_steps or None,
          log=log)
    self.style_history: list[dict] = []

  def __call__(self, synthesize, step, out_dir, writer, extra: dict | None = None) -> dict:
    """Scores `synthesize` (see protocol.Evaluator) as checkpoint `step`; process 0 writes report.json (with
    `extra` added) and grid.png into `out_dir`; `writer` gets the scalars and the grid."""
    import jax
    report, grid = self.evaluator(synthesize, step)
    report.update(extra or {})
    if report.get("style"):
      self.style_history.append({"step": None if step is None else int(step),
                                 "accuracy": report["style"]["accuracy"],
                                 "random_code_shares": report["style"]["random_code_shares"]})
      report["style"]["over_training"] = list(self.style_history)
      shares = "/".join(report["style"]["random_code_shares"])
      self.log(f"style accuracy over training (random-code shares {shares}): " + ", ".join(
          f"step {h['step']} {h['accuracy'] or 0:.3f} ("
          + "/".join(f"{v or 0:.2f}" for v in h["random_code_shares"].values()) + ")" for h in self.style_history))
    out_dir = pathlib.Path(out_dir)
    if jax.process_index() == 0:  # every process has the whole report; one writes it
      protocol.write(report, grid, out_dir)
    scalars = protocol.scalars(report)
    writer.write_scalars(int(step or 0), scalars)
    writer.write_images(int(step or 0), {"eval/grid": grid})
    self.log(f"eval at step {step} ({report['seconds']:.0f}s, {report['data']['num_images']} images): "
             f"{summary(report)}; report {out_dir / 'report.json'}")
    return report


def summary(report: dict) -> str:
  """The report's scores in one line."""
  parts = []
  if report.get("fid") is not None:
    parts.append(f"FID {report['fid']:.4f}" + ("" if report["fid_protocol"]["meaningful"] else " (random weights)"))
  seg = report.get("segmentation")
  if seg:
    parts.append(f"{seg['network']}: mIoU {seg['miou']:.4f}, pixel accuracy {seg['pixel_accuracy']:.4f} (real "
                 f"images {seg['real_images']['miou']:.4f} / {seg['real_images']['pixel_accuracy']:.4f})")
  style = report.get("style")
  if style:
    err = style.get("random_code_share_stderr") or {}
    parts.append(f"style accuracy {style['accuracy'] or 0:.3f}, random-code shares " + ", ".join(
        f"{k} {v or 0:.2f}" + (f" +- {err[k]:.2f}" if err.get(k) is not None else "")
        for k, v in style["random_code_shares"].items()) + f" ({style.get('num_random_samples', 0)} codes)")
  return "; ".join(parts) or "no scores"


def synthesize_fn(syn, seed: int = 0):
  """The protocol's `synthesize` for a Synthesizer: VAE models get z drawn per image index from `seed`, or the
  encoder's mean of `style` images (the demo's style scores)."""

  def run(labels, instances, first, style=None):
    instances = instances if not syn.no_instance else None
    if style is not None:
      return syn.synthesize(labels, instances=instances, style=list(style))
    z = np.asarray(protocol.eval_latents(first, len(labels), syn.generator.z_dim, seed)) if syn.use_vae else None
    return syn.synthesize(labels, instances=instances, z=z)
  return run


def share_over_processes(run):
  """Several processes (a multi-host job): each synthesises its contiguous share of every batch (VAE codes follow
  the image index, so the split changes nothing) and the shares are gathered on all of them. One process: `run`."""
  import jax
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


def evaluate_checkpoint(workdir, *, step: int | None = None, config=None, overrides: dict[str, Any] | None = None,
                        out=None) -> dict:
  """Evaluates a checkpoint by the protocol and writes DIR/eval/step_<N>/ (or `out`): report.json, grid.png and
  TensorBoard scalars in logs/. The options are `config.eval`; `config` (a ConfigDict) replaces the checkpoint's
  own config (checked against it first), `overrides` ({'eval.num_images': 4, ...}) change the one used."""
  import jax

  from spade_jax import checkpoints, inference
  from spade_jax import config as spade_config
  from spade_jax.errors import UserError
  from spade_jax.writer import MetricWriter

  ckdir, ckstep = checkpoints.resolve_checkpoint(workdir, step)
  saved = spade_config.from_dict(checkpoints.read_config_dir(ckdir, ckstep))
  if config is not None:  # checked against the checkpoint's own config before any weights are read
    spade_config.validate(config)
    mismatch = spade_config.state_mismatch(saved, config, ckdir.parent, keys=spade_config.SYNTHESIS_KEYS,
                                           remedy="or leave out --config (the checkpoint's own config is used)")
    if mismatch:
      raise UserError(mismatch)
  config = spade_config.from_dict((config if config is not None else saved).to_dict())  # a copy
  for key, value in (overrides or {}).items():
    spade_config.put(config, key, value)
  spade_config.validate(config)
  syn = inference.load(workdir, step, use_ema=bool(config.eval.use_ema))
  out = pathlib.Path(out or pathlib.Path(workdir) / "eval" / f"step_{syn.step}")
  evaluation = Evaluation(config, syn.image_size)
  ev = evaluation.evaluator
  _log(f"eval: step {syn.step} ({syn.weights} weights), {ev.num_images} of {ev.split_size} validation images at "
       f"{syn.image_size[0]}x{syn.image_size[1]}, output {out}")
  with MetricWriter(str(out / "logs"), enabled=jax.process_index() == 0) as writer:
    return evaluation(share_over_processes(synthesize_fn(syn)), syn.step, out, writer, extra={
        "checkpoint": {"source": syn.source, "step": syn.step, "weights": syn.weights}})
