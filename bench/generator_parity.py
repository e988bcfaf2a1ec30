"""The generator on this machine's accelerator against the PyTorch reference (spade_jax/testing/torch_reference.py):
max |diff|.

  python bench/generator_parity.py                      # COCO-Stuff generator (ngf 64, 256x256), batch 4
  python bench/generator_parity.py --ngf=16 --crop=64   # a quick run on a CPU
  python bench/generator_parity.py --ngf=4 --crop=32 --label_nc=6 --batch=2 --precisions=highest   # a smoke run

The same random weights (the official key layout, converted by spade_jax.weights.official) in both; eval mode and
train mode (batch statistics, one spectral-norm power iteration). JAX runs on its default device in float32, with
the default matmul precision (on NVIDIA GPUs: TF32 convolutions) and with 'highest' (true float32); PyTorch runs on
the CPU in float64, the exact answer to the float32 inputs. A script, not a test: bench/device_check.sh runs it on
a GPU, where CI cannot.
"""
from __future__ import annotations

import argparse


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ngf", type=int, default=64)
  p.add_argument("--crop", type=int, default=256)
  p.add_argument("--label_nc", type=int, default=184)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--precisions", default="default,highest", help="JAX matmul precisions to compare")
  args = p.parse_args(argv)

  import jax
  import numpy as np
  import torch

  from spade_jax.models import SPADEGenerator
  from spade_jax.testing import torch_reference as ref
  from spade_jax.weights.official import torch_to_variables

  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  b, s, nc = args.batch, args.crop, args.label_nc
  label = rng.integers(0, nc, (b, s // 16, s // 16)).repeat(16, 1).repeat(16, 2)
  sem = np.eye(nc, dtype=np.float32)[label]
  sem_t = torch.from_numpy(np.ascontiguousarray(sem.transpose(0, 3, 1, 2)))
  # the official init (gain 0.02) leaves the eval-mode output ~0; a larger gain gives outputs of order 1 to compare
  t = ref.xavier_init_(ref.SPADEGenerator(nc, ngf=args.ngf, crop_size=s), gain=0.5)
  ref.train_steps_(t, sem_t)  # non-trivial u, v and running statistics
  variables = torch_to_variables({k: v.detach().numpy().copy() for k, v in t.state_dict().items()}, "G")
  t = t.double()
  g = SPADEGenerator(ngf=args.ngf, crop_size=s)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} float64 on CPU; "
        f"generator ngf {args.ngf}, {s}x{s}, {nc} label channels, batch {b}")
  print("| mode | matmul precision | max abs diff | max abs torch output | mean abs diff |")
  print("|---|---|---:|---:|---:|")
  for train in (False, True):
    with torch.no_grad():
      theirs = t.train(train)(sem_t.double()).numpy().transpose(0, 2, 3, 1)  # eval first: u, v unchanged
    for precision in args.precisions.split(","):
      with jax.default_matmul_precision(precision):
        fn = jax.jit(lambda v, x: g.apply(v, x, train=train, mutable=["batch_stats", "spectral"] if train else False))
        out = fn(variables, sem)
        ours = np.asarray(out[0] if train else out, np.float64)
      diff = np.abs(ours - theirs)
      print(f"| {'train' if train else 'eval'} | {precision} | {diff.max():.2e} | {np.abs(theirs).max():.2f} | "
            f"{diff.mean():.2e} |", flush=True)


if __name__ == "__main__":
  main()
