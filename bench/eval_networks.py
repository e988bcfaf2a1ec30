"""Throughput of the evaluation networks on this machine (random weights; speed does not depend on them).

  .venv/bin/python bench/eval_networks.py [--batch 8] [--iters 3] [--drn-size 256x512]
      [--seg-batch 2] [--seg-iters 2] [--seg-size 256] [--skip-{inception,drn,upernet,deeplab}]

Inception: uint8 images already at 299x299 (the bilinear resize is still run, as in pytorch-fid) -> 2048-d features.
DRN-D-105: images at --drn-size -> 19-class log-probabilities at the same size.
UperNet-101 (ADE20K): `segment_ade20k` on --seg-size images, single scale (scales=(seg_size,)) and mit-semseg's
default multi-scale test (300..600, i.e. 320..608 after rounding up to multiples of 32) -> class ids.
DeepLabV2 MSC (COCO-Stuff): `segment_cocostuff` on --seg-size images (scales 1, 0.5, 0.75) -> class ids.
Images/s exclude compilation (one warm-up call per function).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from spade_jax.evaluation import deeplab, upernet
from spade_jax.evaluation.drn import DRNSeg, normalize
from spade_jax.evaluation.inception import FIDInceptionV3


def _bench(fn, x, iters):
  jax.block_until_ready(fn(x))  # compile + warm-up
  t0 = time.perf_counter()
  for _ in range(iters):
    jax.block_until_ready(fn(x))
  return iters * x.shape[0] / (time.perf_counter() - t0)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--drn-size", default="256x512")
  ap.add_argument("--skip-drn", action="store_true")
  ap.add_argument("--skip-inception", action="store_true")
  ap.add_argument("--seg-batch", type=int, default=2)
  ap.add_argument("--seg-iters", type=int, default=2)
  ap.add_argument("--seg-size", type=int, default=256)
  ap.add_argument("--skip-upernet", action="store_true")
  ap.add_argument("--skip-deeplab", action="store_true")
  a = ap.parse_args(argv)
  print(f"devices: {jax.devices()}")
  rng = np.random.default_rng(0)
  if not a.skip_inception:
    _inception(a, rng)
  if not a.skip_drn:
    _drn(a, rng)
  if not a.skip_upernet:
    _upernet(a, rng)
  if not a.skip_deeplab:
    _deeplab(a, rng)


def _inception(a, rng):
  inc = FIDInceptionV3()
  v = jax.jit(inc.init)(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
  f = jax.jit(lambda x: inc.apply(v, x.astype(jnp.float32) / 255.0))
  x = jnp.asarray(rng.integers(0, 256, (a.batch, 299, 299, 3), dtype=np.uint8))
  print(f"FID Inception 299x299, batch {a.batch}: {_bench(f, x, a.iters):.2f} images/s")


def _drn(a, rng):
  h, w = map(int, a.drn_size.split("x"))
  drn = DRNSeg()
  dv = jax.jit(drn.init)(jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)))
  g = jax.jit(lambda x: jnp.argmax(drn.apply(dv, normalize(x)), -1))
  xd = jnp.asarray(rng.integers(0, 256, (a.batch, h, w, 3), dtype=np.uint8))
  print(f"DRN-D-105 {h}x{w}, batch {a.batch}: {_bench(g, xd, a.iters):.2f} images/s")



def _seg_images(a, rng):
  return jnp.asarray(rng.integers(0, 256, (a.seg_batch, a.seg_size, a.seg_size, 3), dtype=np.uint8))


def _upernet(a, rng):
  model = upernet.UperNet101()
  v = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  x = _seg_images(a, rng)
  s = a.seg_size
  for scales in ((s,), upernet.DEFAULT_SCALES):
    f = lambda im, sc=scales: upernet.segment_ade20k(model, v, im, scales=sc)
    print(f"UperNet-101 {s}x{s} scales {scales}, batch {a.seg_batch}: {_bench(f, x, a.seg_iters):.3f} images/s")


def _deeplab(a, rng):
  model = deeplab.DeepLabV2MSC()
  v = jax.jit(model.clone(scales=()).init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))  # same variables
  x = _seg_images(a, rng)
  f = lambda im: deeplab.segment_cocostuff(model, v, im)
  s = a.seg_size
  print(f"DeepLabV2 MSC {s}x{s} (scales 1, 0.5, 0.75), batch {a.seg_batch}: {_bench(f, x, a.seg_iters):.3f} images/s")


if __name__ == "__main__":
  main()
