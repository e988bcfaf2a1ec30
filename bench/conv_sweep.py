"""Every convolution of a SPADE train iteration, timed: forward, input gradient, and the weight gradient both ways.

  python bench/conv_sweep.py                      # COCO-Stuff 256x256, ngf 64, batch 1 (the issue's benchmark)
  python bench/conv_sweep.py --preset=cityscapes --batch=2 --top=12

Lists the distinct convolution shapes of one train step (G, D, E; VGG uses flax's conv and needs no weight
gradient), and for each: how often the step runs it, XLA's forward, XLA's input gradient, XLA's weight gradient
of the explicitly padded input ('xla') and the per-tap matmul weight gradient ('taps', `layers.conv_weight_grad`),
and the method `layers.conv_method` picks. The totals weight each shape by its count (forward counts; a backward
runs once per differentiated forward). This is the measurement behind `conv_method`'s rule: rerun it on a new
machine or jax version before changing the rule.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def conv_shapes(config, batch):
  """{(x shape, kernel shape, stride, padding): calls} of the forward pass of one train step (traced, not run)."""
  import jax
  import jax.numpy as jnp

  from spade_jax.models import layers
  from spade_jax.training.schedule import make_optimizers
  from spade_jax.training.step import StepSpec, init_state, train_step
  seen = collections.Counter()
  original = layers.conv2d

  def spy(x, kernel, bias=None, stride=1, padding=0):
    seen[(tuple(x.shape), tuple(kernel.shape), stride, padding)] += 1
    return original(x, kernel, bias, stride, padding)

  spec, tx = StepSpec.from_config(config), make_optimizers(config, 1000)
  spec = dataclasses.replace(spec, vgg=None)
  h, w = spec.nets.image_size
  state = jax.eval_shape(lambda r: init_state(spec, *tx, r), jax.random.key(0))
  b = {"image": jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32),
       "label": jax.ShapeDtypeStruct((batch, h, w), jnp.int32)}
  if not config.data.no_instance:
    b["instance"] = jax.ShapeDtypeStruct((batch, h, w), jnp.int32)
  modules = [m for m in sys.modules.values() if getattr(m, "conv2d", None) is original]
  for m in modules:
    m.conv2d = spy
  try:
    jax.eval_shape(lambda s, b: train_step(spec, *tx, s, b, None, jax.random.key(0)), state, b)
  finally:
    for m in modules:
      m.conv2d = original
  return seen


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="coco_stuff")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--ngf", type=int, default=0)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--top", type=int, default=0, help="only the N shapes with the most forward FLOPs (0: all)")
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from spade_jax.models import layers
  config = importlib.import_module(f"configs.{args.preset}").get_config()
  if args.ngf:
    config.model.ngf = config.model.ndf = args.ngf
  shapes = conv_shapes(config, args.batch)

  def flops(key):
    (n, h, w, c), (k, _, _, o), s, pad = key
    ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    return 2 * n * ho * wo * k * k * c * o

  def best(fn, *a):
    jax.block_until_ready(fn(*a))
    times = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times.append(time.perf_counter() - t)
    return min(times)

  keys = sorted(shapes, key=lambda key: -flops(key) * shapes[key])
  if args.top:
    keys = keys[:args.top]
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; {args.preset} batch {args.batch}; min of "
        f"{args.repeats}; seconds per call")
  print("| input | kernel | stride | pad | calls | GFLOP | fwd | dx | dw xla | dw taps | picked |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  totals = collections.Counter()
  rng = np.random.default_rng(0)
  for key in keys:
    xs, ks, s, pad = key
    x = jnp.asarray(rng.normal(size=xs), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=ks) * 0.05, jnp.float32)
    fwd = jax.jit(lambda x, w: layers._xla_conv(x, w, s, pad))
    g = jnp.asarray(rng.normal(size=fwd(x, kernel).shape), jnp.float32)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: layers._xla_conv(x, w, s, pad), x)[1](g)[0])
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dw_xla = jax.jit(lambda xp, w, g: jax.vjp(lambda w: layers._xla_conv(xp, w, s, 0), w)[1](g)[0])
    dw_taps = jax.jit(lambda xp, g: layers.conv_weight_grad(xp, g, ks[0], s))
    t = {"fwd": best(fwd, x, kernel), "dx": best(dx, x, kernel, g), "xla": best(dw_xla, xp, kernel, g),
         "taps": best(dw_taps, xp, g)}
    picked = layers.conv_method(xs, ks, s, pad)
    n = shapes[key]
    for name in ("fwd", "dx", "xla", "taps"):
      totals[name] += n * t[name]
    totals["picked"] += n * t[picked]
    totals["best"] += n * min(t["xla"], t["taps"])
    print(f"| {xs} | {ks} | {s} | {pad} | {n} | {flops(key) / 1e9:.2f} | {t['fwd']:.3f} | {t['dx']:.3f} | "
          f"{t['xla']:.3f} | {t['taps']:.3f} | {picked} |", flush=True)
  print(f"\ntotals over the listed calls: forward {totals['fwd']:.2f} s, input gradients {totals['dx']:.2f} s, "
        f"weight gradients: xla {totals['xla']:.2f} s, taps {totals['taps']:.2f} s, as picked "
        f"{totals['picked']:.2f} s, best of the two per shape {totals['best']:.2f} s")


if __name__ == "__main__":
  main()
