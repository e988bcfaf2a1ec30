"""Compile time of the train state's initialisation with XLA's defaults against `platforms.init_compiler_options`.

  .venv/bin/python bench/init_compile.py                  # the demo config (ngf 16, 64x64, VAE)
  .venv/bin/python bench/init_compile.py --preset=cityscapes

The init program (`training.step.init_state`: G, D, E and the optimiser states, every parameter its own random draw)
is lowered once and compiled twice in a fresh process (no compilation cache), each compile then run once; the
largest difference between the two initialisations is printed beside the times.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="demo", help="a library preset or a config .py file")
  p.add_argument("--reverse", action="store_true", help="compile with init_compiler_options first")
  args = p.parse_args(argv)

  import jax
  import numpy as np
  import optax

  from spade_jax import config as spade_config
  from spade_jax import platforms
  from spade_jax.training.step import StepSpec, init_state
  config = (spade_config.from_file(args.preset) if args.preset.endswith(".py") else spade_config.preset(args.preset))
  config.loss.lambda_vgg = 0.0  # VGG19 is not part of the state
  sgd = optax.sgd(1e-2)
  init = functools.partial(init_state, StepSpec.from_config(config, platform="cpu"), sgd, sgd)
  key = jax.random.key(0)
  lowered = jax.jit(init).lower(key)
  states = {}
  ways = [("XLA defaults", None), ("init_compiler_options", platforms.init_compiler_options("cpu"))]
  for name, options in ways[::-1] if args.reverse else ways:
    t = time.perf_counter()
    states[name] = jax.block_until_ready(lowered.compile(compiler_options=options)(key))
    print(f"{name:22s} compile + run {time.perf_counter() - t:6.1f} s", flush=True)
  a, b = (jax.tree.leaves(states[name]) for name, _ in ways)
  diff = max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y)).max()) for x, y in zip(a, b))
  print(f"largest difference {diff:.1e}")


if __name__ == "__main__":
  main()
