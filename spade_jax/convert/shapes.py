"""What official state dicts determine by their keys and shapes: which network a file holds and its options."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from spade_jax.weights.official import ConversionError


def detect_network(sd: Mapping[str, np.ndarray]) -> str | None:
  keys = list(sd)
  if any(k.startswith("head_0.") for k in keys):
    return "G"
  if any(k.startswith("discriminator_") for k in keys):
    return "D"
  if any(k.startswith("layer1.") for k in keys) or "fc_mu.weight" in sd:
    return "E"
  if any(k.startswith("model.") for k in keys) and any(".conv_block." in k for k in keys):
    return "pix2pixhd"
  if any(k.startswith("features.") for k in keys):
    return "vgg19"
  return None


def _describe(sd) -> str:
  keys = list(sd)
  return f"{len(keys)} keys: " + ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")


def _require(sd, key, what):
  if key not in sd:
    raise ConversionError(f"{what}: key {key!r} is missing ({_describe(sd)})")
  return np.shape(sd[key])


def _conv_weight(sd, prefix, what):
  for leaf in ("weight_orig", "weight"):
    if prefix + leaf in sd:
      return np.shape(sd[prefix + leaf]), leaf == "weight_orig"
  raise ConversionError(f"{what}: neither {prefix}weight_orig nor {prefix}weight is in the file ({_describe(sd)})")


def infer_generator(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """What a SPADEGenerator state dict determines: ngf, semantic_nc, use_vae, most, param-free norm, kernel, SN."""
  what = "generator"
  (c16, _, _, _), spectral = _conv_weight(sd, "head_0.conv_0.", what)
  if c16 % 16:
    raise ConversionError(f"{what}: head_0.conv_0 has {c16} output channels, not a multiple of 16 (16 * ngf)")
  ngf = c16 // 16
  shared = _require(sd, "head_0.norm_0.mlp_shared.0.weight", what)
  fc = _require(sd, "fc.weight", what)
  info = {
      "model.ngf": ngf,
      "semantic_nc": int(shared[1]),
      "model.spade_kernel": int(shared[2]),
      "model.use_vae": len(fc) == 2,
      "most": any(k.startswith("up_4.") for k in sd),
      "model.param_free_norm": ("syncbatch" if "head_0.norm_0.param_free_norm.running_mean" in sd else "instance"),
      "model.spectral_G": spectral,
  }
  if len(fc) == 2:
    if fc[1] != 256:
      raise ConversionError(f"{what}: the VAE fc takes z of width {fc[1]}; the official encoder gives 256")
    if fc[0] % c16:
      raise ConversionError(f"{what}: fc.weight {list(fc)} is not (16*ngf*sh*sw, 256) for ngf {ngf}")
    info["latent_cells"] = fc[0] // c16
  elif len(fc) == 4 and fc[1] != shared[1]:
    raise ConversionError(f"{what}: fc.weight takes {fc[1]} channels but the SPADE layers take {shared[1]}")
  return info


def infer_discriminator(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  what = "discriminator"
  scales = sorted({int(m.group(1)) for k in sd if (m := re.match(r"discriminator_(\d+)\.", k))})
  if scales != list(range(len(scales))) or not scales:
    raise ConversionError(f"{what}: expected discriminator_0..discriminator_<n-1>, found scales {scales}")
  groups = sorted({int(m.group(1)) for k in sd if (m := re.match(r"discriminator_0\.model(\d+)\.", k))})
  if not groups or groups != list(range(len(groups))):
    raise ConversionError(f"{what}: expected groups model0..model<n>, found {groups}")
  w0 = _require(sd, "discriminator_0.model0.0.weight", what)
  spectral = any(k.endswith("weight_orig") for k in sd)
  norm = "none" if "discriminator_0.model1.0.bias" in sd else "instance"  # norm_D 'spectral': convs keep a bias
  return {"model.num_D": len(scales), "model.n_layers_D": len(groups) - 1, "model.ndf": int(w0[0]),
          "input_nc": int(w0[1]), "model.spectral_D": spectral, "model.discriminator_norm": norm}


def infer_encoder(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  what = "encoder"
  (ndf, cin, _, _), spectral = _conv_weight(sd, "layer1.0.", what)
  if "layer6.0.weight_orig" not in sd and "layer6.0.weight" not in sd:
    raise ConversionError(f"{what}: layer6 is missing: the official encoder drops it for crop_size < 256, which "
                          "leaves its fc layers the wrong width (a bug of the official code); not supported")
  mu = _require(sd, "fc_mu.weight", what)
  (c6, _, _, _), _ = _conv_weight(sd, "layer6.0.", what)
  cells = mu[1] // c6
  s = math.isqrt(cells)
  if s * s * c6 != mu[1]:
    raise ConversionError(f"{what}: fc_mu.weight {list(mu)} does not take a square {c6}-channel map")
  norm = "none" if "layer1.0.bias" in sd else "instance"  # the official code drops the bias under a norm layer
  return {"ndf": int(ndf), "model.encoder_input_size": 64 * s, "model.spectral_E": spectral,
          "model.encoder_norm": norm, "input_nc": int(cin)}
