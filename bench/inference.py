"""Inference speed of the full-size SPADE generator (eval mode, jitted, fp32): images/s per batch size.

  .venv/bin/python bench/inference.py                       # COCO-Stuff: ngf 64, 184 channels, 256x256
  .venv/bin/python bench/inference.py --preset=cityscapes --batch_sizes=1,4
  .venv/bin/python bench/inference.py --ngf=4 --crop=32 --batch_sizes=2 --repeats=1 --warmup=1  # a smoke run

Random weights from model.init (no checkpoint needed); the timed function is what `Synthesizer.synthesize` runs on
the device (`Networks.synthesize`, jitted with the project's compiler options): label ids (+ instance ids) ->
one-hot + edges -> generator -> [-1, 1] image (host-side PNG decoding,
resizing and the uint8 conversion are not included). Each batch size is compiled and warmed up first; the table
reports the median over --repeats timed calls.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="coco_stuff", help="a library preset or a config .py file")
  p.add_argument("--ngf", type=int, default=0, help="override ngf (0: the preset's)")
  p.add_argument("--crop", type=int, default=0, help="override crop_size (0: the preset's)")
  p.add_argument("--batch_sizes", default="1,8")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  args = p.parse_args(argv)

  import components
  import jax
  import jax.numpy as jnp
  import numpy as np

  from spade_jax import platforms
  from spade_jax.models import count_params
  from spade_jax.networks import Networks
  from spade_jax.semantics import label_channels

  config = components.load_config(args.preset, args.ngf, args.crop)
  d, m = config.data, config.model
  nets = Networks.from_config(config)
  G, (h, w), s = nets.G, nets.image_size, nets.semantic_nc
  generate = jax.jit(nets.synthesize, compiler_options=platforms.compiler_options())
  z = jnp.zeros((1, G.z_dim)) if m.use_vae else None
  variables = jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, h, w, s)), z)
  nc = label_channels(d)
  print(f"{args.preset}: ngf {m.ngf}, semantic_nc {s}, {h}x{w}, {m.num_upsampling_layers}, "
        f"{count_params(variables):,} G parameters, fp32, eval mode")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}")
  rng = np.random.default_rng(0)
  rows = []
  for bs in [int(b) for b in args.batch_sizes.split(",")]:
    batch = {"label": jnp.asarray(rng.integers(0, nc, (bs, h // 16, w // 16)).repeat(16, 1).repeat(16, 2), jnp.int32)}
    if not d.no_instance:
      blocks = rng.integers(0, 4, (bs, h // 32, w // 32)).repeat(32, 1).repeat(32, 2)
      batch["instance"] = jnp.asarray(blocks, jnp.int32)
    zb = jnp.asarray(rng.normal(size=(bs, G.z_dim)), jnp.float32) if m.use_vae else None
    run = lambda: generate(variables, batch, zb).block_until_ready()
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
