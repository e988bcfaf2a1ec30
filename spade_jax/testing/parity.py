"""Helpers shared by the parity tests and the benchmarks: torch module -> our variables, NCHW <-> NHWC, comparisons."""
import numpy as np

from spade_jax.weights.official import torch_to_variables


def state_dict_np(module):
  return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def variables_from(module, network, **kw):
  return torch_to_variables(state_dict_np(module), network, **kw)


def nchw(x):
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t):
  return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def assert_close(ours, theirs, atol=1e-5, rtol=1e-5, what=""):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
  err = np.abs(ours - theirs)
  tol = atol + rtol * np.abs(theirs)
  assert (err <= tol).all(), f"{what}: max abs diff {err.max():.3g} (|torch| max {np.abs(theirs).max():.3g})"
  return float(err.max())
