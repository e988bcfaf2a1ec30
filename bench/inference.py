"""Inference speed of the full-size SPADE generator (eval mode, jitted, fp32): images/s per batch size.

  .venv/bin/python bench/inference.py                       # COCO-Stuff: ngf 64, 184 channels, 256x256
  .venv/bin/python bench/inference.py --preset=cityscapes --batch_sizes=1,4

Random weights from model.init (no checkpoint needed); the timed function is what `Synthesizer.synthesize` runs on
the device: label ids (+ instance ids) -> one-hot + edges -> generator -> [-1, 1] image (host-side PNG decoding,
resizing and the uint8 conversion are not included). Each batch size is compiled and warmed up first; the table
reports the median over --repeats timed calls.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="coco_stuff")
  p.add_argument("--batch_sizes", default="1,8")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  args = p.parse_args(argv)

  import importlib

  import jax
  import jax.numpy as jnp
  import numpy as np

  from spade_jax.inference import _generate
  from spade_jax.models import build_generator, count_params, output_size, semantic_nc

  config = importlib.import_module(f"configs.{args.preset}").get_config()
  d, m = config.data, config.model
  G = build_generator(config)
  h, w = output_size(d.crop_size, d.aspect_ratio, m.num_upsampling_layers)
  s = semantic_nc(d)
  z = jnp.zeros((1, G.z_dim)) if m.use_vae else None
  variables = jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, h, w, s)), z)
  from spade_jax.semantics import label_channels
  nc = label_channels(d)
  print(f"{args.preset}: ngf {m.ngf}, semantic_nc {s}, {h}x{w}, {m.num_upsampling_layers}, "
        f"{count_params(variables):,} G parameters, fp32, eval mode")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}")
  rng = np.random.default_rng(0)
  rows = []
  for bs in [int(b) for b in args.batch_sizes.split(",")]:
    label = jnp.asarray(rng.integers(0, nc, (bs, h // 16, w // 16)).repeat(16, 1).repeat(16, 2), jnp.int32)
    inst = None if d.no_instance else jnp.asarray(rng.integers(0, 4, (bs, h // 32, w // 32)).repeat(32, 1).repeat(
        32, 2), jnp.int32)
    zb = jnp.asarray(rng.normal(size=(bs, G.z_dim)), jnp.float32) if m.use_vae else None
    run = lambda: _generate(G, d.label_nc, d.contain_dontcare_label, d.no_instance, variables, label, inst,
                            zb).block_until_ready()
    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
      run()
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      run()
      times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rows.append((bs, compile_s, med, bs / med))
  print()
  print("| batch | first call (compile + run) s | s / batch (median) | images/s |")
  print("|---:|---:|---:|---:|")
  for bs, c, t, ips in rows:
    print(f"| {bs} | {c:.1f} | {t:.3f} | {ips:.2f} |")


if __name__ == "__main__":
  main()
