"""Forward and forward + backward of each SPADE ResBlock of the COCO-Stuff generator, alone: ours (jitted) and
PyTorch eager (spade_jax/testing/torch_reference.py), on the same shapes. Where the generator is slow, this says
which block.

  python bench/blocks.py                      # ngf 64, 256x256, batch 1, label conv as the default config (auto)
  python bench/blocks.py --blocks=up_2,up_3 --label_conv=dense --no_torch
  python bench/blocks.py --ngf=4 --size=32 --blocks=up_3 --steps=1   # a smoke run

Train mode (batch statistics, one spectral-norm iteration); the loss is mean(y^2), differentiated w.r.t. the block's
parameters and input. Min of --steps calls after a warm-up call.
"""
from __future__ import annotations

import argparse

LABELS = 183  # COCO-Stuff: 182 classes + don't-care, no instance edges (as bench/torch_compare.py)
BLOCKS = {  # name: (fin, fout) in units of ngf, and the output size over the block's resolution
    "head_0": (16, 16, 32), "G_middle_0": (16, 16, 16), "up_0": (16, 8, 8), "up_1": (8, 4, 4), "up_2": (4, 2, 2),
    "up_3": (2, 1, 1),
}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--blocks", default=",".join(BLOCKS))
  p.add_argument("--ngf", type=int, default=64)
  p.add_argument("--size", type=int, default=256, help="the generator's output size (a multiple of 32)")
  p.add_argument("--label_conv", default="auto", choices=["auto", "dense", "gather"])
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--threads", type=int, default=2, help="torch threads")
  p.add_argument("--no_torch", action="store_true")
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  from components import _best

  from spade_jax import platforms
  from spade_jax.models.spade import SPADEResnetBlock
  from spade_jax.platforms import label_conv_kind
  gather = label_conv_kind(ml_collections.ConfigDict({"model": {"spade_label_conv": args.label_conv}})) == "gather"
  rng = np.random.default_rng(0)
  size = args.size
  label = rng.integers(0, LABELS, (1, size // 16, size // 16)).repeat(16, 1).repeat(16, 2)
  onehot = np.eye(LABELS, dtype=np.float32)[label]
  ids = (jnp.asarray(label[..., None].astype(np.int32)), jnp.zeros((1, size, size, 0)))
  seg = ids if gather else jnp.asarray(onehot)
  jit = lambda f: jax.jit(f, compiler_options=platforms.compiler_options())
  print(f"SPADE ResBlocks, COCO-Stuff ngf {args.ngf}, {size}x{size}, batch 1, label conv "
        f"{'gather' if gather else 'dense'}; seconds")
  print("| block | shape | PyTorch fwd | PyTorch fwd+bwd | ours fwd | ours fwd+bwd | PyTorch / ours fwd+bwd |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for name in args.blocks.split(","):
    fin, fout, r = args.ngf * BLOCKS[name][0], args.ngf * BLOCKS[name][1], size // BLOCKS[name][2]
    x = rng.normal(size=(1, r, r, fin)).astype(np.float32)
    block = SPADEResnetBlock(fout, label_channels=LABELS if gather else 0)
    variables = block.init(jax.random.key(0), jnp.asarray(x), seg)

    def loss(params, x, block=block, variables=variables):
      y, _ = block.apply({**variables, "params": params}, x, seg, train=True, mutable=["batch_stats", "spectral"])
      return jnp.mean(y * y)
    fwd, grad = jit(loss), jit(jax.grad(loss, argnums=(0, 1)))
    xj = jnp.asarray(x)
    ours_f = _best(lambda: fwd(variables["params"], xj), args.steps)
    ours_fb = _best(lambda: grad(variables["params"], xj), args.steps)
    theirs_f = theirs_fb = float("nan")
    if not args.no_torch:
      import torch

      from spade_jax.testing import torch_reference as ref
      torch.set_num_threads(args.threads)
      t_block = ref.SPADEResnetBlock(fin, fout, LABELS).train()
      xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
      st = torch.from_numpy(onehot).permute(0, 3, 1, 2).contiguous()

      def forward_only(t_block=t_block, xt=xt, st=st):
        with torch.no_grad():
          t_block(xt, st)

      def forward_backward(t_block=t_block, xt=xt, st=st):
        (t_block(xt, st) ** 2).mean().backward()
      theirs_f, theirs_fb = _best(forward_only, args.steps), _best(forward_backward, args.steps)
    print(f"| {name} | {fin}->{fout} at {r}x{r} | {theirs_f:.3f} | {theirs_fb:.3f} | {ours_f:.3f} | {ours_fb:.3f} | "
          f"{theirs_fb / ours_fb:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
