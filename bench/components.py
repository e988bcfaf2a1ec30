"""Per-component times of a SPADE train iteration, in JAX (jitted) and in PyTorch eager, on the same shapes.

Used by bench/speed.py (JAX) and bench/torch_compare.py (both): a regression shows up in the component where it
happens, not only in the whole iteration. Also the benches' shared helpers: `load_config` (a --preset flag's value),
`random_inputs` and `_best`. Components (batch B, fp32 unless the config says otherwise):
- G fwd: the generator in train mode (batch statistics, spectral-norm iteration), B label maps -> B images;
- G fwd+bwd: the same plus the gradient of a scalar of the output w.r.t. G's parameters;
- D fwd+bwd: the multiscale discriminator on [fake; real] (2B), gradients w.r.t. its parameters and its input;
- VGG fwd+bwd: VGG19 to relu5_1 on 2B images, gradient w.r.t. the input (the weights are frozen).
"""
from __future__ import annotations

import functools
import time

COMPONENTS = ("G fwd", "G fwd+bwd", "D fwd+bwd", "VGG fwd+bwd")


def load_config(name: str, ngf: int = 0, crop: int = 0):
  """A library preset (spade_jax.config.preset: coco_stuff, cityscapes, ...) or the get_config() of a config .py
  file at that path; `ngf`, `crop`: when set, the generator's width and the crop (and load) size, for a smaller
  or quicker run."""
  from spade_jax import config as spade_config
  config = spade_config.from_file(name) if name.endswith(".py") else spade_config.preset(name)
  if ngf:
    config.model.ngf = ngf
  if crop:
    config.data.crop_size = config.data.load_size = crop
  return config


def _best(fn, repeats):
  """Min over `repeats` timed calls after one warm-up (compilation) call; fn returns what to wait for."""
  import jax
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return min(times)


def random_inputs(config, batch, seed=0):
  """Label ids (16x16-pixel blocks of random classes) and images in [-1, 1], numpy, at the model's output size."""
  import numpy as np

  from spade_jax.models import output_size
  d = config.data
  h, w = output_size(d.crop_size, d.aspect_ratio, config.model.num_upsampling_layers)
  rng = np.random.default_rng(seed)
  from spade_jax.semantics import label_channels
  nc = label_channels(d)
  label = rng.integers(0, nc, (batch, h // 16, w // 16)).repeat(16, 1).repeat(16, 2).astype(np.int32)
  image = rng.uniform(-1, 1, (batch, h, w, 3)).astype(np.float32)
  return label, image


def jax_times(config, batch, repeats=2) -> dict:
  """Seconds per call of each component in jitted JAX (one device)."""
  import jax
  import jax.numpy as jnp

  from spade_jax import platforms
  from spade_jax.models import VGG19
  from spade_jax.networks import Networks
  nets = Networks.from_config(config)
  label, image = random_inputs(config, batch)
  sem = nets.semantics({"label": jnp.asarray(label)})
  real = jnp.asarray(image)
  z = jnp.zeros((batch, nets.G.z_dim)) if nets.E is not None else None
  g_vars = jax.jit(nets.G.init)(jax.random.key(0), sem[:1], None if z is None else z[:1])
  pairs = jnp.concatenate([jnp.concatenate([sem, real], -1)] * 2, 0)  # D's input: [labels | image] for 2 x batch
  d_vars = jax.jit(nets.D.init)(jax.random.key(1), pairs[:1])
  vgg = VGG19(dtype=nets.dtype)
  vgg_params = jax.jit(vgg.init)(jax.random.key(2), real[:1])["params"]
  mutable = ["batch_stats", "spectral"]
  jit = functools.partial(jax.jit, compiler_options=platforms.compiler_options())  # as the train step

  # inputs are arguments, never closed-over constants (XLA would spend seconds constant-folding them)
  g_fwd = jit(lambda v, sem, z: nets.G.apply(v, sem, z, train=True, mutable=mutable)[0])

  def g_loss(params, v, sem, z, real):
    return jnp.mean(nets.G.apply({**v, "params": params}, sem, z, train=True, mutable=mutable)[0] * real)
  g_grad = jit(lambda v, sem, z, real: jax.grad(g_loss)(v["params"], v, sem, z, real))

  def d_loss(params, x, v):
    outs = nets.D.apply({**v, "params": params}, x, train=True, mutable=["spectral"])[0]
    return sum(jnp.mean(f) for scale in outs for f in scale)
  d_grad = jit(lambda v, x: jax.grad(d_loss, argnums=(0, 1))(v["params"], x, v))

  two = jnp.concatenate([real, real[::-1]], 0)
  vgg_grad = jit(lambda p, x: jax.grad(lambda x: sum(jnp.mean(f) for f in vgg.apply({"params": p}, x)))(x))
  return {"G fwd": _best(lambda: g_fwd(g_vars, sem, z), repeats),
          "G fwd+bwd": _best(lambda: g_grad(g_vars, sem, z, real), repeats),
          "D fwd+bwd": _best(lambda: d_grad(d_vars, pairs), repeats),
          "VGG fwd+bwd": _best(lambda: vgg_grad(vgg_params, two), repeats)}


def torch_times(config, batch, repeats=2, threads=None) -> dict:
  """Seconds per call of each component in PyTorch eager on the parity tests' reference modules."""
  import torch

  from spade_jax.semantics import semantic_channels
  from spade_jax.testing import torch_reference as ref
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  d, m = config.data, config.model
  s = semantic_channels(d)
  G = ref.SPADEGenerator(s, ngf=m.ngf, num_upsampling_layers=m.num_upsampling_layers, crop_size=d.crop_size,
                         aspect_ratio=d.aspect_ratio, param_free_norm=m.param_free_norm)
  D = ref.MultiscaleDiscriminator(s + 3, ndf=m.ndf)
  vgg = ref.VGG19Features().eval()
  for p in vgg.parameters():
    p.requires_grad_(False)
  label, image = random_inputs(config, batch)
  sem = torch.nn.functional.one_hot(torch.from_numpy(label).long(), s).permute(0, 3, 1, 2).float()
  real = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()

  def timed(fn):
    fn()
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    return min(times)

  def g_fwd():
    with torch.no_grad():
      G(sem)

  def g_grad():
    G.zero_grad()
    (G(sem) * real).mean().backward()

  pairs = torch.cat([torch.cat([sem, real], 1)] * 2, 0)  # D's input: [labels | image] for 2 x batch

  def d_grad():
    D.zero_grad()
    x = pairs.clone().requires_grad_(True)
    sum(f.mean() for scale in D(x) for f in scale).backward()

  two = torch.cat([real, real.flip(0)], 0)

  def vgg_grad():
    x = two.clone().requires_grad_(True)
    sum(f.mean() for f in vgg(x)).backward()

  G.train()
  D.train()
  return {"G fwd": timed(g_fwd), "G fwd+bwd": timed(g_grad), "D fwd+bwd": timed(d_grad),
          "VGG fwd+bwd": timed(vgg_grad)}
