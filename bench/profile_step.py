"""Where one jitted train iteration spends its time, per XLA operation, grouped by network, pass and kind.

  pip install xprof                                   # the profile reader (not a dependency of the project)
  python bench/profile_step.py                        # COCO-Stuff 256x256, ngf 64, batch 1, VGG on
  python bench/profile_step.py --crop=128 --batch=2 --top=40
  python bench/profile_step.py --ngf=4 --crop=32 --batch=2 --top=3 --no_vgg   # a smoke run

Traces one iteration with jax.profiler after a warm-up, reads the trace with xprof, and maps each executed XLA
operation to the JAX code that made it (the HLO's op_name metadata): totals per (network, forward/backward), per
kind (convolutions, matmuls, copies/transposes, reductions, the rest) and the most expensive operations. Times are
summed over XLA's worker threads (on a 2-core CPU about twice the wall time).
"""
from __future__ import annotations

import argparse
import collections
import glob
import pathlib
import re
import sys
import tempfile

NETWORKS = ("SPADEGenerator", "MultiscaleDiscriminator", "VGG19", "ConvEncoder")


def _kind(name: str, op_name: str) -> str:
  backward = "transpose(jvp" in op_name
  if "conv_general_dilated" in op_name or name.startswith("convolution"):
    return "conv " + ("backward" if backward else "forward")
  if "dot_general" in op_name:
    return "matmul " + ("backward" if backward else "forward")
  if "transpose" in name or "copy" in name:
    return "copy / transpose"
  if "reduce" in name:
    return "reduction"
  return "other (elementwise, pad, slice, ...)"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="coco_stuff", help="a library preset or a config .py file")
  p.add_argument("--ngf", type=int, default=0, help="override ngf (0: the preset's)")
  p.add_argument("--crop", type=int, default=0, help="override crop_size (0: the preset's)")
  p.add_argument("--no_vgg", action="store_true")
  p.add_argument("--hlo", default="", help="also write the compiled program's HLO text here")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--label_conv", default="auto", choices=["auto", "dense", "gather"])
  p.add_argument("--top", type=int, default=25)
  args = p.parse_args(argv)
  try:
    from xprof.profile_data import ProfileData
  except ImportError:
    sys.exit("bench/profile_step.py reads the trace with xprof: pip install xprof")

  import jax
  import numpy as np
  from components import load_config, random_inputs

  from spade_jax import parallel
  from spade_jax.models import VGG19
  from spade_jax.training.state import create_train_state

  config = load_config(args.preset, args.ngf, args.crop)
  config.data.no_instance = True
  config.train.batch_size = args.batch
  config.model.spade_label_conv = args.label_conv
  from spade_jax.platforms import label_conv_kind
  if args.no_vgg:
    config.loss.lambda_vgg = 0.0
  mesh = parallel.make_mesh(1)
  state, setup = create_train_state(config, mesh)
  label, image = random_inputs(config, args.batch)
  with jax.set_mesh(mesh):
    vgg = VGG19().init(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))["params"] if setup.spec.vgg else None
    batch = parallel.global_batch({"label": label, "image": image}, mesh)
    compiled = setup.step.lower(state, batch, vgg, jax.random.key(2)).compile()
    state, metrics = compiled(state, batch, vgg, jax.random.key(2))
    jax.block_until_ready(metrics)
    trace_dir = tempfile.mkdtemp(prefix="spade_jax_profile_")
    jax.profiler.start_trace(trace_dir)
    state, metrics = compiled(state, batch, vgg, jax.random.key(2))
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()

  if args.hlo:
    pathlib.Path(args.hlo).write_text(compiled.as_text())
  op_names, operands = {}, {}
  for line in compiled.as_text().splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = [^(]*?\(([^)]*)\)", line)
    if m:
      found = re.search(r'op_name="([^"]+)"', line)
      op_names[m.group(1)] = found.group(1) if found else ""
      operands[m.group(1)] = re.findall(r"%([\w.\-]+)", m.group(2))
  for name in [n for n, o in op_names.items() if not o]:  # XLA-made ops (tree reductions, layout copies): named
    queue, seen = list(operands.get(name, [])), set()    # after the nearest operand that has a source
    while queue and not op_names[name]:
      operand = queue.pop(0)
      if operand in seen or operand not in op_names:
        continue
      seen.add(operand)
      if op_names[operand]:
        op_names[name] = op_names[operand] + " [an operand]"
      queue += operands.get(operand, [])
  by_kind, by_net, ops = collections.Counter(), collections.Counter(), []
  trace = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
  for plane in ProfileData.from_file(trace).planes:
    for line in plane.lines:
      if "XLAEigen" not in line.name:  # XLA:CPU's worker threads; other backends name their lines differently
        continue
      for event in line.events:
        if event.name.startswith("ThunkExecutor"):
          continue
        op_name = op_names.get(event.name, "")
        net = next((n for n in NETWORKS if n in op_name), "(other)")
        by_kind[_kind(event.name, op_name)] += event.duration_ns / 1e9
        by_net[(net, "backward" if "transpose(jvp" in op_name else "forward")] += event.duration_ns / 1e9
        ops.append((event.duration_ns / 1e9, event.name, op_name))
  total = sum(by_kind.values())
  print(f"{args.preset} crop {config.data.crop_size} batch {args.batch}, label conv {label_conv_kind(config)}: "
        f"{total:.2f} s of XLA thread time in one iteration")
  print("\n| network | pass | s |\n|---|---|---:|")
  for (net, pass_), s in by_net.most_common():
    print(f"| {net} | {pass_} | {s:.2f} |")
  print("\n| kind | s |\n|---|---:|")
  for kind, s in by_kind.most_common():
    print(f"| {kind} | {s:.2f} |")
  print("\n| ms | XLA op | from |\n|---:|---|---|")
  for s, name, op_name in sorted(ops, reverse=True)[:args.top]:
    print(f"| {1e3 * s:.1f} | {name} | {op_name.removeprefix('jit(train_step)/')[-100:]} |")


if __name__ == "__main__":
  main()
