"""Helpers for the conversion / synthesis tests: torch reference networks with the official keys, trained a few
steps (non-trivial u, v and BN statistics), saved with torch.save; label maps; the reference semantics in numpy."""
from __future__ import annotations

import collections

import numpy as np
import torch

from spade_jax.testing import torch_reference as ref
from spade_jax.testing.parity import nchw, nhwc

Z_DIM = 256


def blocky(rng, n, h, w, high, block=4):
  """Random piecewise-constant int maps (N, H, W) with values in [0, high)."""
  small = rng.integers(0, high, (n, -(-h // block), -(-w // block)))
  return small.repeat(block, 1).repeat(block, 2)[:, :h, :w].astype(np.int32)


def edges_np(inst):
  """4-neighbour instance edges, written independently of spade_jax.semantics."""
  e = np.zeros(inst.shape, bool)
  dh = inst[:, 1:, :] != inst[:, :-1, :]
  dw = inst[:, :, 1:] != inst[:, :, :-1]
  e[:, 1:, :] |= dh
  e[:, :-1, :] |= dh
  e[:, :, 1:] |= dw
  e[:, :, :-1] |= dw
  return e.astype(np.float32)


def semantics_np(label, inst, num_classes, edges):
  sem = np.eye(num_classes, dtype=np.float32)[label]
  if edges:
    sem = np.concatenate([sem, edges_np(inst)[..., None]], -1)
  return sem


def torch_generator(semantic_nc, ngf, mode, crop, aspect=1.0, use_vae=False, norm="syncbatch", seed=0,
                    batch=2, steps=2):
  """A reference SPADEGenerator after `steps` training-mode forwards on random semantics."""
  torch.manual_seed(seed)
  g = ref.SPADEGenerator(semantic_nc, ngf=ngf, num_upsampling_layers=mode, crop_size=crop, aspect_ratio=aspect,
                         use_vae=use_vae, param_free_norm=norm)
  f = 2 ** {"normal": 5, "more": 6, "most": 7}[mode]
  h, w = g.sh * f, g.sw * f
  rng = np.random.default_rng(seed)
  sem = semantics_np(blocky(rng, batch, h, w, semantic_nc - 1), blocky(rng, batch, h, w, 3, 8), semantic_nc - 1,
                     True)
  args = (nchw(sem),) + ((torch.randn(batch, Z_DIM),) if use_vae else ())
  ref.train_steps_(g, *args, n=steps)
  return g.eval()


def torch_discriminator(input_nc, ndf=8, seed=0, size=64, steps=2, norm="instance"):
  torch.manual_seed(seed)
  d = ref.MultiscaleDiscriminator(input_nc, ndf=ndf, norm=norm)
  ref.train_steps_(d, torch.randn(2, input_nc, size, size), n=steps)
  return d.eval()


def torch_encoder(ngf, input_size=128, seed=0, steps=2, norm="instance"):
  torch.manual_seed(seed)
  e = ref.ConvEncoder(ngf, crop_size=256, input_size=input_size, norm=norm)
  ref.train_steps_(e, torch.rand(2, 3, 96, 96) * 2 - 1, n=steps)
  return e.eval()


def save(module_or_sd, path):
  sd = module_or_sd.state_dict() if hasattr(module_or_sd, "state_dict") else module_or_sd
  torch.save(sd, path)
  return path


def old_format(sd):
  """The torch-0.4 spectral-norm layout: `weight` (normalised, from the stored u, v) instead of `weight_v`, and no
  version metadata, so torch's load hook rebuilds v on load."""
  out = collections.OrderedDict()
  for k, v in sd.items():
    if k.endswith("weight_v"):
      continue
    out[k] = v.clone()
    if k.endswith("weight_orig"):
      p = k[: -len("weight_orig")]
      w_mat = v.reshape(v.shape[0], -1)
      sigma = torch.dot(sd[p + "weight_u"], w_mat @ sd[p + "weight_v"])
      out[p + "weight"] = v / sigma
  return out


@torch.no_grad()
def torch_forward(module, *inputs_nhwc):
  return module(*[nchw(x) if np.ndim(x) == 4 else torch.from_numpy(np.asarray(x)) for x in inputs_nhwc])


def torch_images(g, sem, z=None):
  with torch.no_grad():
    out = g(nchw(sem), *((torch.from_numpy(np.asarray(z)),) if z is not None else ()))
  return nhwc(out)


OPT_TXT = """----------------- Options ---------------
             aspect_ratio: {aspect}                          	[default: 1.0]
                batchSize: 1
                crop_size: {crop}                          	[default: 512]
          checkpoints_dir: ./checkpoints
   contain_dontcare_label: {dontcare}
             dataset_mode: {dataset}                        	[default: coco]
                  gpu_ids: 0
                label_nc: {label_nc}                            	[default: 182]
                load_size: {crop}                          	[default: 1024]
                     name: test_run
                      ngf: {ngf}                             	[default: 64]
                     netG: spade
              no_instance: {no_instance}
                   norm_D: spectralinstance
                   norm_E: spectralinstance
                   norm_G: spectralspade{norm}3x3
    num_upsampling_layers: {mode}                          	[default: normal]
          preprocess_mode: fixed                         	[default: scale_width_and_crop]
                  use_vae: {use_vae}
                    z_dim: 256
----------------- End -------------------
"""
