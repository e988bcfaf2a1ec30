"""A SPADE train iteration, its components and generator inference: our jitted JAX against PyTorch eager, on
this machine, as ratios.

  python bench/torch_compare.py                       # COCO-Stuff 256x256, ngf 64, batch 1, VGG loss on
  python bench/torch_compare.py --preset=coco_stuff --crop=128 --batch=2
  python bench/torch_compare.py --preset=cityscapes --ngf=32 --threads=2 --no_components
  python bench/torch_compare.py --ngf=4 --crop=32 --batch=2 --steps=1 --infer_batch=2 --no_vgg  # a smoke run

PyTorch runs the reference networks the parity tests use (spade_jax/testing/torch_reference.py, the official
module layout): G step (G forward, D on [fake; real], hinge + feature matching + VGG, backward, Adam) then D step
(G forward without gradients, D on [fake; real] detached, hinge, backward, Adam), as the official trainer.
Components as in bench/components.py; inference is the generator in eval mode on a batch of one-hot maps
(--infer_batch). Every time is the minimum over --steps calls after a warm-up call (and, for JAX, compilation).
Both sides use float32, random weights and the same input sizes. Needs the test extra (torch). Prints one table.
"""
from __future__ import annotations

import argparse
import os
import time


def torch_iteration_seconds(config, batch, steps, threads):
  import numpy as np
  import torch

  from spade_jax.models import output_size
  from spade_jax.semantics import semantic_channels
  from spade_jax.testing import torch_reference as ref
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  d, m, l = config.data, config.model, config.loss
  h, w = output_size(d.crop_size, d.aspect_ratio, m.num_upsampling_layers)
  s = semantic_channels(d)
  G = ref.SPADEGenerator(s, ngf=m.ngf, num_upsampling_layers=m.num_upsampling_layers, crop_size=d.crop_size,
                         aspect_ratio=d.aspect_ratio, param_free_norm=m.param_free_norm)
  D = ref.MultiscaleDiscriminator(s + 3, ndf=m.ndf)
  vgg = ref.VGG19Features().eval() if l.lambda_vgg > 0 else None
  if vgg is not None:
    for p in vgg.parameters():
      p.requires_grad_(False)
  opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
  opt_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
  rng = np.random.default_rng(0)
  from spade_jax.semantics import label_channels
  nc = label_channels(d)
  label = torch.from_numpy(rng.integers(0, nc, (batch, h // 16, w // 16)).repeat(16, 1).repeat(16, 2))
  sem = torch.nn.functional.one_hot(label, s).permute(0, 3, 1, 2).float()  # (the edge channel, if any, stays 0)
  real = torch.rand(batch, 3, h, w) * 2 - 1

  def iteration():
    opt_g.zero_grad()
    fake = G(sem)
    pred = D(torch.cat([torch.cat([sem, fake], 1), torch.cat([sem, real], 1)], 0))
    pf = [[f[:batch] for f in scale] for scale in pred]
    pr = [[f[batch:] for f in scale] for scale in pred]
    loss = ref.hinge_g(pf) + ref.feature_matching(pf, pr, l.lambda_feat)
    if vgg is not None:
      loss = loss + ref.vgg_loss(vgg, fake, real, lambda_vgg=l.lambda_vgg)
    loss.backward()
    opt_g.step()
    opt_d.zero_grad()
    with torch.no_grad():
      fake = G(sem)
    pred = D(torch.cat([torch.cat([sem, fake], 1), torch.cat([sem, real], 1)], 0))
    pf = [[f[:batch] for f in scale] for scale in pred]
    pr = [[f[batch:] for f in scale] for scale in pred]
    (ref.hinge_d_fake(pf) + ref.hinge_d_real(pr)).backward()
    opt_d.step()

  iteration()  # warm-up
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    iteration()
    times.append(time.perf_counter() - t)
  return min(times)


def torch_inference_seconds(config, batch, steps, threads):
  import torch
  from components import random_inputs

  from spade_jax.semantics import semantic_channels
  from spade_jax.testing import torch_reference as ref
  torch.set_num_threads(threads)
  d, m = config.data, config.model
  s = semantic_channels(d)
  G = ref.SPADEGenerator(s, ngf=m.ngf, num_upsampling_layers=m.num_upsampling_layers, crop_size=d.crop_size,
                         aspect_ratio=d.aspect_ratio, param_free_norm=m.param_free_norm).eval()
  label, _ = random_inputs(config, batch)
  sem = torch.nn.functional.one_hot(torch.from_numpy(label).long(), s).permute(0, 3, 1, 2).float()
  times = []
  with torch.no_grad():
    G(sem)
    for _ in range(steps):
      t = time.perf_counter()
      G(sem)
      times.append(time.perf_counter() - t)
  return min(times)


def jax_inference_seconds(config, batch, steps):
  import jax
  import jax.numpy as jnp
  from components import random_inputs

  from spade_jax import platforms
  from spade_jax.networks import Networks
  nets = Networks.from_config(config)
  label, _ = random_inputs(config, batch)
  sem = nets.semantics({"label": jnp.asarray(label)})
  variables = jax.jit(nets.G.init)(jax.random.key(0), sem[:1], None)
  gen = jax.jit(lambda v, sem: nets.G.apply(v, sem, None, train=False), compiler_options=platforms.compiler_options())
  jax.block_until_ready(gen(variables, sem))
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(gen(variables, sem))
    times.append(time.perf_counter() - t)
  return min(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="coco_stuff", help="a library preset or a config .py file")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--ngf", type=int, default=0)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--label_conv", default="auto", choices=["auto", "dense", "gather"])
  p.add_argument("--no_vgg", action="store_true")
  p.add_argument("--crop", type=int, default=0, help="override crop_size (e.g. 128)")
  p.add_argument("--infer_batch", type=int, default=8, help="generator inference batch (0: skip)")
  p.add_argument("--no_components", action="store_true")
  args = p.parse_args(argv)

  import components
  import jax
  import numpy as np

  from spade_jax import parallel
  from spade_jax.models import VGG19
  from spade_jax.training.state import create_train_state

  config = components.load_config(args.preset, args.ngf, args.crop)
  config.data.no_instance = True  # the torch side feeds no edge channel either
  config.model.use_vae = False
  if args.no_vgg:
    config.loss.lambda_vgg = 0.0
  config.model.spade_label_conv = args.label_conv

  from spade_jax.platforms import label_conv_kind
  rows = []
  if not args.no_components:
    theirs = components.torch_times(config, args.batch, args.steps, args.threads)
    ours = components.jax_times(config, args.batch, args.steps)
    rows += [(name, theirs[name], ours[name]) for name in components.COMPONENTS]
  t_torch = torch_iteration_seconds(config, args.batch, args.steps, args.threads)

  mesh = parallel.make_mesh(1)
  state, setup = create_train_state(config, mesh)
  h, w = setup.spec.nets.image_size
  rng = np.random.default_rng(0)
  from spade_jax.semantics import label_channels
  nc = label_channels(config.data)
  local = {"image": rng.uniform(-1, 1, (args.batch, h, w, 3)).astype(np.float32),
           "label": rng.integers(0, nc, (args.batch, h // 16, w // 16)).repeat(16, 1).repeat(16, 2).astype(np.int32)}
  with jax.set_mesh(mesh):
    step = setup.step
    vgg = None
    if setup.spec.vgg is not None:
      vgg = VGG19().init(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))["params"]
    batch = parallel.global_batch(local, mesh)
    state, m = step(state, batch, vgg, jax.random.key(2))  # compile + warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
      t = time.perf_counter()
      state, m = step(state, batch, vgg, jax.random.key(2))
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
    t_jax = min(times)
  rows.append(("train iteration", t_torch, t_jax))
  if args.infer_batch:
    rows.append((f"inference, batch {args.infer_batch}", torch_inference_seconds(config, args.infer_batch, args.steps,
                                                                               args.threads),
                 jax_inference_seconds(config, args.infer_batch, args.steps)))
  torch_version = __import__("torch").__version__
  print(f"{args.preset} {h}x{w}, ngf {config.model.ngf}, batch {args.batch}, VGG {'on' if vgg is not None else 'off'}, "
        f"label conv {label_conv_kind(config)}; {os.cpu_count()} CPU cores, torch threads {args.threads}")
  print(f"| what | PyTorch {torch_version} eager s | JAX {jax.__version__} jit s | PyTorch / JAX |")
  print("|---|---:|---:|---:|")
  for name, t_t, t_j in rows:
    print(f"| {name} | {t_t:.3f} | {t_j:.3f} | {t_t / t_j:.2f}x |")


if __name__ == "__main__":
  main()
