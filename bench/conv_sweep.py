"""Every convolution of a SPADE train iteration, timed: forward, input gradient, and the weight gradient both ways.

  python bench/conv_sweep.py                      # COCO-Stuff 256x256, ngf 64, batch 1 (the issue's benchmark)
  python bench/conv_sweep.py --preset=cityscapes --batch=2 --top=12
  python bench/conv_sweep.py --ngf=4 --crop=32 --repeats=1 --top=1   # a smoke run

Lists the distinct convolution shapes of one train step (G, D, E; VGG uses flax's conv and needs no weight
gradient), and for each: how often the step runs it, XLA's forward, the input gradient both ways (XLA's, and the
columns form `platforms.conv_input_grad`), the weight gradient both ways (XLA's of the explicitly padded input, and the
per-tap matmuls `platforms.conv_weight_grad`), and the methods `platforms.conv_method` picks. The totals weight
each shape by its count (forward counts; a backward runs once per differentiated forward). Programs compile with
`platforms.compiler_options` as the train step does (`--xla_defaults`: XLA:CPU's defaults, i.e. YNNPACK
convolutions). This is the measurement behind `conv_method`'s rule: rerun it on a new machine or jax version before
changing the rule.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import sys
import time


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
  p.add_argument("--preset", default="coco_stuff", help="a library preset or a config .py file")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--ngf", type=int, default=0, help="override ngf and ndf (0: the preset's)")
  p.add_argument("--crop", type=int, default=0, help="override crop_size (0: the preset's)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--top", type=int, default=0, help="only the N shapes with the most forward FLOPs (0: all)")
  p.add_argument("--xla_defaults", action="store_true", help="compile with XLA's default options, not the project's")
  args = p.parse_args(argv)

  import components
  import jax
  import jax.numpy as jnp
  import numpy as np

  from spade_jax import platforms
  jit = functools.partial(jax.jit, compiler_options=None if args.xla_defaults else platforms.compiler_options())
  config = components.load_config(args.preset, args.ngf, args.crop)
  if args.ngf:
    config.model.ndf = args.ngf
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
  print("| input | kernel | stride | pad | calls | GFLOP | fwd | dx xla | dx cols | dw xla | dw taps | picked |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  totals = collections.Counter()
  rng = np.random.default_rng(0)
  for key in keys:
    xs, ks, s, pad = key
    x = jnp.asarray(rng.normal(size=xs), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=ks) * 0.05, jnp.float32)
    fwd = jit(lambda x, w: platforms.xla_conv(x, w, s, pad))
    g = jnp.asarray(rng.normal(size=fwd(x, kernel).shape), jnp.float32)
    dx_xla = jit(lambda x, w, g: jax.vjp(lambda x: platforms.xla_conv(x, w, s, pad), x)[1](g)[0])
    dx_cols = jit(lambda w, g: platforms.conv_input_grad(g, w, xs, s, pad))
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dw_xla = jit(lambda xp, w, g: jax.vjp(lambda w: platforms.xla_conv(xp, w, s, 0), w)[1](g)[0])
    dw_taps = jit(lambda xp, g: platforms.conv_weight_grad(xp, g, ks[0], s))
    t = {"fwd": best(fwd, x, kernel), "dx xla": best(dx_xla, x, kernel, g), "dx cols": best(dx_cols, kernel, g),
         "dw xla": best(dw_xla, xp, kernel, g), "dw taps": best(dw_taps, xp, g)}
    dx, dw = platforms.conv_method(xs, ks, s, pad)
    n = shapes[key]
    for name in t:
      totals[name] += n * t[name]
    totals["picked"] += n * (t["dx " + dx] + t["dw " + dw])
    totals["best"] += n * (min(t["dx xla"], t["dx cols"]) + min(t["dw xla"], t["dw taps"]))
    print(f"| {xs} | {ks} | {s} | {pad} | {n} | {flops(key) / 1e9:.2f} | {t['fwd']:.3f} | {t['dx xla']:.3f} | "
          f"{t['dx cols']:.3f} | {t['dw xla']:.3f} | {t['dw taps']:.3f} | {dx}, {dw} |", flush=True)
  print(f"\ntotals over the listed calls: forward {totals['fwd']:.2f} s; input gradients: xla "
        f"{totals['dx xla']:.2f} s, cols {totals['dx cols']:.2f} s; weight gradients: xla {totals['dw xla']:.2f} s, "
        f"taps {totals['dw taps']:.2f} s; both gradients as picked {totals['picked']:.2f} s, best per shape "
        f"{totals['best']:.2f} s")


if __name__ == "__main__":
  main()
