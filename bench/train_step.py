"""Train-step benchmark: images/s of the full SPADE G step + D step, compile time and peak memory.

python bench/train_step.py --config=configs/cityscapes.py --batch=1 --steps=3
Prints one table row. Random weights (VGG included, so its cost is counted); no data set needed.
"""
import argparse
import importlib.util
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from spade_jax import parallel  # noqa: E402
from spade_jax.models import VGG19  # noqa: E402
from spade_jax.training.schedule import make_optimizers  # noqa: E402
from spade_jax.training.step import Model, init_state, make_train_step  # noqa: E402


def load_config(path):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/cityscapes.py")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--devices", type=int, default=-1)
  p.add_argument("--no_vgg", action="store_true")
  args = p.parse_args()

  config = load_config(args.config)
  config.train.batch_size = args.batch
  if args.no_vgg:
    config.loss.lambda_vgg = 0.0
  mesh = parallel.make_mesh(args.devices)
  model = Model.from_config(config)
  tx_g, tx_d = make_optimizers(config, 1000)
  repl = parallel.replicated(mesh)
  h, w = model.image_size
  rng = np.random.default_rng(0)
  local = {"image": rng.uniform(-1, 1, (args.batch, h, w, 3)).astype(np.float32),
           "label": rng.integers(0, config.data.label_nc, (args.batch, h, w)).astype(np.int32)}
  if not config.data.no_instance:
    local["instance"] = rng.integers(0, 4, (args.batch, h, w)).astype(np.int32)
  with jax.set_mesh(mesh):
    init = lambda r: init_state(model, tx_g, tx_d, r)
    sharding = jax.tree.map(lambda _: repl, jax.eval_shape(init, jax.random.key(0)))
    state = jax.jit(init, out_shardings=sharding)(jax.random.key(0))
    vgg = None
    if model.vgg is not None:
      vgg = jax.jit(lambda: VGG19().init(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))["params"],
                    out_shardings=repl)()
    step = make_train_step(model, tx_g, tx_d, mesh, sharding)
    batch = parallel.global_batch(local, mesh)
    t = time.time()
    compiled = step.lower(state, batch, vgg, jax.random.key(2)).compile()
    compile_s = time.time() - t
    mem = compiled.memory_analysis()
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    state, m = compiled(state, batch, vgg, jax.random.key(2))  # warm-up
    jax.block_until_ready(m)
    t = time.time()
    for _ in range(args.steps):
      state, m = compiled(state, batch, vgg, jax.random.key(2))
    jax.block_until_ready(m)
    dt = (time.time() - t) / args.steps
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  temp = getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem else float("nan")
  print(f"| config | device | batch | s/step | images/s | compile s | XLA temp GiB | peak RSS GiB | GFLOP/step |")
  print(f"|---|---|---|---|---|---|---|---|---|")
  print(f"| {Path(args.config).stem} {h}x{w} | {jax.devices()[0].device_kind} x{mesh.devices.size} | {args.batch} "
        f"| {dt:.2f} | {args.batch / dt:.3f} | {compile_s:.1f} | {temp:.2f} | {peak_rss:.2f} | {flops / 1e9:.0f} |")


if __name__ == "__main__":
  main()
