"""Speed and memory of the full SPADE models: one table, one row per (preset, what).

  python bench/speed.py                                        # COCO-Stuff 256x256 and Cityscapes 256x512, fp32
  python bench/speed.py --presets=coco_stuff --dtype=bfloat16 --batch=32 --what=train,infer --infer_batch=128
  python bench/speed.py --label_conv=gather --remat --grad_accum=2 --devices=8
  python bench/speed.py --presets=coco_stuff --ngf=4 --crop=32 --batch=2 --infer_batch=2 --steps=1  # a smoke run

Columns: images/s of a train iteration (G step + D step, VGG loss included, as the official trainer) and of
generator inference (eval mode, label ids in, image out); compile time; peak memory: XLA's estimate for the
compiled program (arguments + outputs + temporaries - aliased) and the device's measured peak where the backend
reports one (GPU/TPU), else the process's peak RSS; model FLOPs per image, from XLA's cost analysis of the *dense*
formulation (SPADE label convs as convolutions, no remat: the work the model defines, whatever the options do to
execute it); achieved model FLOP/s and MFU against the device's peak for the dtype (where known).
Random weights and inputs; no data set needed.
"""
from __future__ import annotations

import argparse
import copy
import os
import pathlib
import platform
import resource
import sys
import time

# Dense peak FLOP/s per device (vendor data sheets; bf16 without sparsity, fp32 = TF32 tensor cores on NVIDIA,
# which XLA uses for fp32 convolutions by default). Matched by substring of jax's device_kind.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},  # SXM; PCIe is 756 / 378
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "TPU v6": {"bfloat16": 918e12, "float32": 918e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
}


def _flops(lowered) -> float:
  """The program's FLOPs by XLA's cost analysis. A Lowered answers on CPU and TPU; on GPU (jax 0.11.2, measured on
  an H200) it returns None, and only the compiled program answers."""
  cost = lowered.cost_analysis() or lowered.compile().cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
  return cost.get("flops", float("nan"))


def peak_flops(device_kind: str, dtype: str):
  for key, peaks in PEAK_FLOPS.items():
    if key.lower() in device_kind.lower():
      return peaks[dtype]
  return None


def _bytes(mem) -> float:
  if mem is None:
    return float("nan")
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)


def _device_peak(device) -> float | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return float(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _time(fn, steps):
  import jax
  jax.block_until_ready(fn())  # warm-up (after compilation)
  t = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--presets", default="coco_stuff,cityscapes", help="presets or config .py files, comma-separated")
  p.add_argument("--what", default="train,infer", help="train and/or infer")
  p.add_argument("--batch", type=int, default=1, help="global train batch")
  p.add_argument("--infer_batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=2, help="timed calls after one warm-up call")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--devices", type=int, default=-1)
  p.add_argument("--remat", action="store_true", help="remat_G and remat_D")
  p.add_argument("--label_conv", default="auto", choices=["auto", "dense", "gather"])
  p.add_argument("--grad_accum", type=int, default=1)
  p.add_argument("--ngf", type=int, default=0, help="override ngf (0: the preset's 64)")
  p.add_argument("--crop", type=int, default=0, help="override crop_size (0: the preset's)")
  p.add_argument("--no_vgg", action="store_true")
  p.add_argument("--components", action="store_true", help="also time G fwd, G fwd+bwd, D fwd+bwd, VGG fwd+bwd")
  args = p.parse_args(argv)

  import components
  import jax
  import jax.numpy as jnp
  import numpy as np

  from spade_jax import parallel, platforms
  from spade_jax.models import VGG19
  from spade_jax.networks import Networks
  from spade_jax.training.state import create_train_state

  mesh = parallel.make_mesh(args.devices)
  # Model FLOPs are counted on the host's CPU backend, whatever the devices: the same number on every machine, and
  # no compile on the device (a GPU's Lowered has no cost analysis; compiling the dense reference there doubled the
  # compile time of every row, measured on an H200).
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  cpu_mesh = jax.make_mesh((1,), (parallel.DATA,), axis_types=(jax.sharding.AxisType.Auto,),
                           devices=jax.devices("cpu")[:1])

  def train_flops(dense_setup, shapes, with_vgg):
    with jax.set_mesh(cpu_mesh):
      batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "image" else jnp.int32,
                                       sharding=parallel.batch_sharding(cpu_mesh)) for k, shape in shapes.items()}
      vgg = jax.eval_shape(lambda: VGG19().init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))["params"]
                           ) if with_vgg else None
      return _flops(dense_setup.step.lower(dense_setup.abstract, batch, vgg, jax.eval_shape(jax.random.key, 2)))
  dev = jax.devices()[0]
  peak = peak_flops(dev.device_kind, args.dtype)
  print(f"jax {jax.__version__}, {dev.platform} {dev.device_kind} x{mesh.devices.size}, {os.cpu_count()} CPU cores "
        f"({platform.machine()}); dtype {args.dtype}, label conv {args.label_conv}, remat {args.remat}, grad_accum "
        f"{args.grad_accum}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  component_rows = []
  print("| preset | size | what | batch | images/s | compile s | XLA peak GiB | device peak GiB | "
        "model GFLOP/image | achieved TFLOP/s | MFU |")
  print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)

  start = time.perf_counter()

  def say(what):
    """Progress on stderr (the GPU check logs it, and keeps stdout for the table): where a cut-off run was."""
    print(f"[speed {time.perf_counter() - start:6.1f} s] {what}", file=sys.stderr, flush=True)

  def emit(preset, size, what, bs, ips, comp, xla_mem, dev_mem, fpi, fps):
    """One row as soon as it is measured (a run cut short by a time limit keeps what it finished)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dev_col = f"{dev_mem / 2**30:.2f}" if dev_mem is not None else f"(RSS {rss / 2**30:.2f})"
    mfu = f"{100 * fps / peak:.1f}%" if peak else "n/a"
    print(f"| {preset} | {size} | {what} | {bs} | {ips:.3f} | {comp:.1f} | {xla_mem / 2**30:.2f} | {dev_col} | "
          f"{fpi / 1e9:.0f} | {fps / 1e12:.3f} | {mfu} |", flush=True)

  for preset in args.presets.split(","):
    config = components.load_config(preset, args.ngf, args.crop)
    preset = pathlib.Path(preset).stem  # a config file's rows are named after it
    if args.no_vgg:
      config.loss.lambda_vgg = 0.0
    config.train.batch_size = args.batch
    config.train.grad_accum = args.grad_accum
    dense = copy.deepcopy(config)  # the model-FLOPs reference: float32 math counts the same, dense convs, no remat
    dense.model.spade_label_conv = "dense"
    config.model.update(dtype=args.dtype, remat_G=args.remat, remat_D=args.remat, spade_label_conv=args.label_conv)
    d = config.data
    from spade_jax.semantics import label_channels
    nc = label_channels(d)
    rng = np.random.default_rng(0)

    if "train" in args.what:
      # the model-FLOPs reference needs only the step's shapes, not a state
      say(f"{preset} train: building the state and step")
      state, setup = create_train_state(config, mesh)
      _, dense_setup = create_train_state(dense, cpu_mesh, fresh=False)
      h, w = setup.spec.nets.image_size
      local = {"image": rng.uniform(-1, 1, (args.batch, h, w, 3)).astype(np.float32),
               "label": rng.integers(0, nc, (args.batch, h // 16, w // 16)).repeat(16, 1).repeat(16, 2).astype(
                   np.int32)}
      if not d.no_instance:
        local["instance"] = rng.integers(0, 4, (args.batch, h // 32, w // 32)).repeat(32, 1).repeat(32, 2).astype(
            np.int32)
      with jax.set_mesh(mesh):
        repl = parallel.replicated(mesh)
        batch = parallel.global_batch(local, mesh)
        vgg = None
        if setup.spec.vgg is not None:
          vgg = jax.jit(lambda: VGG19().init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))["params"],
                        out_shardings=repl)()

        flops = train_flops(dense_setup, {k: v.shape for k, v in local.items()}, setup.spec.vgg is not None)
        say(f"{preset} train: model FLOPs counted; compiling the step")
        t = time.perf_counter()
        compiled = setup.step.lower(state, batch, vgg, jax.random.key(2)).compile()
        compile_s = time.perf_counter() - t
        say(f"{preset} train: compiled in {compile_s:.1f} s; timing {args.steps} steps")
        box = {"s": state}

        def run():
          box["s"], m = compiled(box["s"], batch, vgg, jax.random.key(2))
          return m
        dt = _time(run, args.steps)
      emit(preset, f"{h}x{w}", "train", args.batch, args.batch / dt, compile_s, _bytes(compiled.memory_analysis()),
                   _device_peak(dev), flops / args.batch, flops / dt)

    if "infer" in args.what:
      nets, dense_nets = Networks.from_config(config), Networks.from_config(dense)
      h, w = nets.image_size
      bs = args.infer_batch
      z = jnp.zeros((bs, nets.G.z_dim)) if config.model.use_vae else None
      sem = jnp.zeros((1, h, w, nets.semantic_nc))
      variables = jax.jit(nets.G.init)(jax.random.key(0), sem, None if z is None else z[:1])
      batch = {"label": jnp.asarray(rng.integers(0, nc, (bs, h // 16, w // 16)).repeat(16, 1).repeat(16, 2), jnp.int32)}
      if not d.no_instance:
        blocks = rng.integers(0, 4, (bs, h // 32, w // 32)).repeat(32, 1).repeat(32, 2)
        batch["instance"] = jnp.asarray(blocks, jnp.int32)
      # what Synthesizer.synthesize runs on the device: label (+ instance) ids -> semantics -> G -> image
      generate = lambda n: jax.jit(n.synthesize, compiler_options=platforms.compiler_options())
      on_cpu = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), tree)
      flops = _flops(generate(dense_nets).lower(*on_cpu((variables, batch, z))))
      t = time.perf_counter()
      compiled = generate(nets).lower(variables, batch, z).compile()
      compile_s = time.perf_counter() - t
      say(f"{preset} infer: compiled in {compile_s:.1f} s; timing {args.steps} calls")
      dt = _time(lambda: compiled(variables, batch, z), args.steps)
      emit(preset, f"{h}x{w}", "infer", bs, bs / dt, compile_s, _bytes(compiled.memory_analysis()),
                   _device_peak(dev), flops / bs, flops / dt)

    if args.components:
      for name, seconds in components.jax_times(config, args.batch, args.steps).items():
        component_rows.append((preset, name, args.batch, seconds))

  if component_rows:
    print()
    print("| preset | component | batch | seconds |")
    print("|---|---|---:|---:|")
    for preset, name, bs, seconds in component_rows:
      print(f"| {preset} | {name} | {bs} | {seconds:.3f} |")


if __name__ == "__main__":
  main()
