"""The one table between official PyTorch state-dict keys and our variable trees (G, D, E and VGG19).

Layout rules: conv weight [O, I, kh, kw] -> kernel [kh, kw, I, O]; linear weight [out, in] -> kernel [in, out];
spectral norm `weight_orig` -> params kernel, `weight_u` -> spectral u, `weight_v` -> spectral v in our (kh, kw, I)
flattening order; SPADE `param_free_norm.running_mean/var` -> batch_stats mean/var (`num_batches_tracked` dropped).
Pure-digit path parts are nn.Sequential wrappers and vanish (`mlp_shared.0` -> `mlp_shared`,
`discriminator_0.model1.0.0` -> `discriminator_0/model1`). Two linear layers need their NCHW order permuted to NHWC:
the VAE generator's `fc` (its output is viewed as (C, sh, sw)) and the encoder's `fc_mu`/`fc_var` (their input is an
NCHW flatten).

Both spectral-norm formats convert: the current `weight_orig/weight_u/weight_v`, and the old (torch 0.4) one with a
stored normalised `weight` and no `weight_v`, for which v is rebuilt so that the eval-mode sigma u.W.v equals
weight_orig / weight (`_old_format_v`). `expected_state_dict` / `check_state_dict` read the table backwards, to
report a wrong or truncated file in its own key names and torch shapes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from spade_jax.errors import UserError
from spade_jax.models.vgg import VGG19_CONVS

_VGG_NAMES = {str(i): name for i, name, _ in VGG19_CONVS}
_BUFFERS = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


class ConversionError(UserError):
  """Weights that do not convert: the message names the file, key or option and what to pass instead."""


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
      _set(out, "spectral", path, "v", _torch_v_to_ours(value, orig.shape))
    elif leaf == "weight" and key[: -len("weight")] + "weight_orig" in sd:
      # Old (torch 0.4) spectral-norm format: a stored normalised `weight`, no `weight_v`. weight_orig is the
      # kernel; v is rebuilt so that eval-mode sigma = u.W.v equals weight_orig / weight (see _old_format_v).
      prefix = key[: -len("weight")]
      if prefix + "weight_v" not in sd:
        _set(out, "spectral", path, "v", _old_format_v(prefix, sd))
    elif leaf == "weight" and value.ndim == 4:
      _set(out, "params", path, "kernel", _conv(value))
    elif leaf == "weight" and value.ndim == 2:
      _set(out, "params", path, "kernel", _linear(key, value, sd, network, latent_hw))
    elif leaf == "bias":
      _set(out, "params", path, "bias", _linear_bias(key, value, sd, network, latent_hw))
    else:
      raise ConversionError(f"unexpected key {key!r} with shape {tuple(value.shape)} for network {network}")
  return out


def _torch_v_to_ours(v, weight_shape):
  """torch flattens v over (in, kh, kw); our kernel matrix flattens over (kh, kw, in)."""
  o, i, kh, kw = weight_shape
  return np.ascontiguousarray(np.asarray(v).reshape(i, kh, kw).transpose(1, 2, 0).reshape(-1))


def _old_format_v(prefix: str, sd: Mapping[str, np.ndarray]) -> np.ndarray:
  """v for an old-format spectral-norm conv (`weight`, `weight_orig`, `weight_u`; no `weight_v`).

  torch's load hook solves W v = u by a pseudo-inverse and rescales v so that u.W.v = sigma, with
  sigma = mean(weight_orig / weight). Eval mode only ever uses the product u.W.v, so any v with u.W.v = sigma gives
  the same output; we take v = sigma * W^T u / |W^T u|^2 (exact, no pseudo-inverse of an in*kh*kw square matrix),
  with sigma = <weight_orig, weight> / <weight, weight> (= the elementwise ratio, robust to zeros in `weight`).
  Training is unaffected by the choice: torch's power iteration, and ours, recompute v from u before using it.
  """
  u = sd.get(prefix + "weight_u")
  if u is None:
    raise ConversionError(f"old-format spectral norm {prefix}weight has no {prefix}weight_u (cannot rebuild "
                          f"{prefix}weight_v)")
  w_orig, w = np.asarray(sd[prefix + "weight_orig"], np.float64), np.asarray(sd[prefix + "weight"], np.float64)
  if w.shape != w_orig.shape:
    raise ConversionError(f"{prefix}weight {list(w.shape)} and {prefix}weight_orig {list(w_orig.shape)} differ "
                          "in shape")
  w_mat = w_orig.reshape(w_orig.shape[0], -1)
  if u.shape != (w_mat.shape[0],):
    raise ConversionError(f"{prefix}weight_u has shape {list(u.shape)}, expected [{w_mat.shape[0]}]")
  denom = float((w * w).sum())
  a = w_mat.T @ np.asarray(u, np.float64)
  if denom == 0 or float(a @ a) == 0:
    raise ConversionError(f"old-format spectral norm {prefix}weight: all-zero weight or u, sigma is undefined")
  sigma = float((w_orig * w).sum()) / denom
  v = a * (sigma / float(a @ a))
  return _torch_v_to_ours(v.astype(np.float32), w_orig.shape)


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


# ---------------------------------------------------------------------------------------------------------------
# The same table read backwards: which official keys (and torch shapes) a model's variables correspond to, so that
# a wrong or truncated file is reported in the file's own key names before anything is converted.
# ---------------------------------------------------------------------------------------------------------------

_BUFFER_NAMES = {("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var",
                 ("spectral", "u"): "weight_u", ("spectral", "v"): "weight_v"}


def _torch_module(path: list[str], network: str, last_group: int, biased: set) -> str:
  """Our module path -> the official module prefix (nn.Sequential indices put back)."""
  if network == "G":
    return ".".join(p + ".0" if p == "mlp_shared" else p for p in path)
  if network == "D":  # discriminator_i.model0.0 / model{1..n-1}.0.0 (conv inside Sequential(conv, IN); norm_D
    *head, group = path  # 'spectral': the conv alone, with its bias, model{1..n-1}.0) / model{n}.0
    n = int(group[len("model"):])
    return ".".join(head + [group, "0" if n in (0, last_group) or tuple(path) in biased else "0.0"])
  if network == "E":
    return ".".join(p + ".0" if p.startswith("layer") else p for p in path)
  raise ConversionError(f"no official key table for network {network!r}")


def expected_state_dict(variables: Mapping, network: str) -> dict[str, tuple]:
  """{official key: torch shape} that the variable tree `variables` (e.g. jax.eval_shape(model.init)) converts from.

  Optional keys (`num_batches_tracked`) are not listed. Conv kernels [kh, kw, I, O] are [O, I, kh, kw] in torch,
  dense kernels [in, out] are [out, in]; a spectral-norm conv's kernel is `weight_orig`.
  """
  flat = flatten(variables)
  groups = [int(p[len("model"):]) for k in flat for p in k.split("/") if p.startswith("model") and p[5:].isdigit()]
  last_group = max(groups, default=-1)
  sn_modules = {tuple(k.split("/")[1:-1]) for k in flat if k.startswith("spectral/")}
  biased = {tuple(k.split("/")[1:-1]) for k in flat if k.startswith("params/") and k.endswith("/bias")}
  out = {}
  for name, shape in flat.items():
    collection, *path, leaf = name.split("/")
    prefix = _torch_module(path, network, last_group, biased)
    if collection == "params" and leaf == "kernel":
      tleaf = "weight_orig" if tuple(path) in sn_modules else "weight"
      tshape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(reversed(shape))
    elif collection == "params" and leaf == "bias":
      tleaf, tshape = "bias", shape
    elif (collection, leaf) in _BUFFER_NAMES:
      tleaf, tshape = _BUFFER_NAMES[collection, leaf], shape
    else:
      raise ConversionError(f"variable {name} has no official counterpart")
    out[f"{prefix}.{tleaf}" if prefix else tleaf] = tuple(tshape)
  return out


def _fmt(shape) -> str:
  return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple], what: str,
                     max_items: int = 20) -> None:
  """Raise ConversionError listing every missing / unexpected official key and every shape mismatch, in the file's
  own key names and torch shapes. Accepts both spectral-norm formats (`weight_v`, or the old normalised `weight`)
  and ignores `num_batches_tracked`."""
  got = {k: tuple(np.shape(v)) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  for k in [k for k in got if k == "weight" or k.endswith(".weight")]:
    prefix = k[: -len("weight")]
    if (prefix + "weight_orig" in got and prefix + "weight_v" in expected and prefix + "weight_v" not in got
        and got[k] == got[prefix + "weight_orig"]):
      del got[k]  # old format: the stored normalised weight stands in for weight_v
      got[prefix + "weight_v"] = tuple(expected[prefix + "weight_v"])
  missing = [k for k in expected if k not in got]
  unexpected = [k for k in got if k not in expected]
  mismatched = [k for k in expected if k in got and got[k] != tuple(expected[k])]
  if not (missing or unexpected or mismatched):
    return

  def show(keys, fmt):
    return "\n".join("    " + fmt(k) for k in keys[:max_items]) + (
        f"\n    ... and {len(keys) - max_items} more" if len(keys) > max_items else "")

  lines = [f"{what} does not match the model ({len(got)} keys in the file, {len(expected)} expected):"]
  if missing:
    lines += [f"  missing keys ({len(missing)}):", show(missing, lambda k: f"{k} {_fmt(expected[k])}")]
  if unexpected:
    lines += [f"  unexpected keys ({len(unexpected)}):", show(unexpected, lambda k: f"{k} {_fmt(got[k])}")]
  if mismatched:
    lines += [f"  shape mismatches ({len(mismatched)}):",
              show(mismatched, lambda k: f"{k}: file {_fmt(got[k])}, model {_fmt(expected[k])}")]
  raise ConversionError("\n".join(lines))
