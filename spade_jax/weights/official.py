"""The one table between official PyTorch state-dict keys and our variable trees (G, D, E and VGG19).

Layout rules: conv weight [O, I, kh, kw] -> kernel [kh, kw, I, O]; linear weight [out, in] -> kernel [in, out];
spectral norm `weight_orig` -> params kernel, `weight_u` -> spectral u, `weight_v` -> spectral v in our (kh, kw, I)
flattening order; SPADE `param_free_norm.running_mean/var` -> batch_stats mean/var (`num_batches_tracked` dropped).
Pure-digit path parts are nn.Sequential wrappers and vanish (`mlp_shared.0` -> `mlp_shared`,
`discriminator_0.model1.0.0` -> `discriminator_0/model1`). Two linear layers need their NCHW order permuted to NHWC:
the VAE generator's `fc` (its output is viewed as (C, sh, sw)) and the encoder's `fc_mu`/`fc_var` (their input is an
NCHW flatten).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from spade_jax.models.vgg import VGG19_CONVS

_VGG_NAMES = {str(i): name for i, name, _ in VGG19_CONVS}
_BUFFERS = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


class ConversionError(ValueError):
  pass


def _module_path(parts: list[str], network: str) -> tuple[str, ...]:
  if network == "vgg19":
    if len(parts) != 2 or parts[0] != "features" or parts[1] not in _VGG_NAMES:
      raise ConversionError(f"unexpected VGG19 key prefix {'.'.join(parts)!r} (expected features.<conv index>)")
    return (_VGG_NAMES[parts[1]],)
  return tuple(p for p in parts if not p.isdigit())


def _set(tree: dict, collection: str, path: tuple[str, ...], leaf: str, value: np.ndarray) -> None:
  node = tree.setdefault(collection, {})
  for p in path:
    node = node.setdefault(p, {})
  node[leaf] = value


def _conv(w):
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def torch_to_variables(state_dict: Mapping[str, np.ndarray], network: str, *,
                       latent_hw: tuple[int, int] | None = None) -> dict:
  """Official state dict -> {'params', 'batch_stats', 'spectral'} for network 'G', 'D', 'E' or 'vgg19'.

  `latent_hw` (sh, sw) is needed only for a VAE generator, whose fc weights do not say the latent grid's aspect.
  """
  sd = {k: np.array(v) for k, v in state_dict.items()}  # copies: never alias a live torch buffer
  out: dict = {}
  for key, value in sd.items():
    *parts, leaf = key.split(".")
    path = _module_path(parts, network)
    if leaf == "num_batches_tracked":
      continue
    if leaf in _BUFFERS:
      collection, name = _BUFFERS[leaf]
      _set(out, collection, path, name, value)
    elif leaf == "weight_orig":
      _set(out, "params", path, "kernel", _conv(value))
    elif leaf == "weight_u":
      _set(out, "spectral", path, "u", value)
    elif leaf == "weight_v":
      orig = sd.get(key[: -len("weight_v")] + "weight_orig")
      if orig is None:
        raise ConversionError(f"{key} has no matching weight_orig")
      o, i, kh, kw = orig.shape
      _set(out, "spectral", path, "v", value.reshape(i, kh, kw).transpose(1, 2, 0).reshape(-1))
    elif leaf == "weight" and value.ndim == 4:
      _set(out, "params", path, "kernel", _conv(value))
    elif leaf == "weight" and value.ndim == 2:
      _set(out, "params", path, "kernel", _linear(key, value, sd, network, latent_hw))
    elif leaf == "bias":
      _set(out, "params", path, "bias", _linear_bias(key, value, sd, network, latent_hw))
    else:
      raise ConversionError(f"unexpected key {key!r} with shape {tuple(value.shape)} for network {network}")
  return out


def _vae_fc_grid(sd, latent_hw, out_features):
  c = sd["head_0.conv_0.weight_orig"].shape[0] if "head_0.conv_0.weight_orig" in sd else sd[
      "head_0.conv_0.weight"].shape[0]
  cells = out_features // c
  if latent_hw is None:
    side = math.isqrt(cells)
    if side * side != cells:
      raise ConversionError(f"the VAE generator's fc has {cells} latent cells, which is not square: pass "
                            "latent_hw=(sh, sw) (e.g. (4, 8) for Cityscapes)")
    latent_hw = (side, side)
  sh, sw = latent_hw
  if sh * sw * c != out_features:
    raise ConversionError(f"latent_hw={latent_hw} with {c} channels does not match fc's {out_features} outputs")
  return c, sh, sw


def _linear(key, w, sd, network, latent_hw):
  k = w.T  # [in, out]
  if network == "G" and key == "fc.weight":
    c, sh, sw = _vae_fc_grid(sd, latent_hw, w.shape[0])
    k = k.reshape(-1, c, sh, sw).transpose(0, 2, 3, 1).reshape(k.shape[0], -1)
  elif network == "E" and key in ("fc_mu.weight", "fc_var.weight"):
    c = sd["layer6.0.weight_orig"].shape[0] if "layer6.0.weight_orig" in sd else w.shape[1] // 16
    s = math.isqrt(w.shape[1] // c)
    k = k.reshape(c, s, s, -1).transpose(1, 2, 0, 3).reshape(w.shape[1], -1)
  return np.ascontiguousarray(k)


def _linear_bias(key, b, sd, network, latent_hw):
  if network == "G" and key == "fc.bias" and sd["fc.weight"].ndim == 2:
    c, sh, sw = _vae_fc_grid(sd, latent_hw, b.shape[0])
    return np.ascontiguousarray(b.reshape(c, sh, sw).transpose(1, 2, 0).reshape(-1))
  return b


def flatten(tree: Mapping, prefix: str = "") -> dict[str, tuple]:
  """{'collection/a/b/leaf': shape} of a (possibly abstract) variable tree, for comparing two trees."""
  flat = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      flat.update(flatten(v, name))
    else:
      flat[name] = tuple(v.shape)
  return flat


def check_variables(converted: Mapping, expected: Mapping, what: str) -> None:
  """Raise listing every missing / unexpected variable and shape mismatch (expected: e.g. jax.eval_shape(init))."""
  got, want = flatten(converted), flatten(expected)
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  mismatched = sorted(f"{k}: checkpoint {got[k]} vs model {want[k]}" for k in set(got) & set(want) if got[k] != want[k])
  if missing or unexpected or mismatched:
    lines = [f"{what} does not match the model:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
      if items:
        lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
    raise ConversionError("\n".join(lines))
