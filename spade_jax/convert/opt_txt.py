"""The official run's opt.txt: parsed, and mapped to our config keys (what shapes the model or its inputs)."""
from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

from spade_jax.weights.official import ConversionError


def _parse_value(text: str) -> Any:
  if text in ("True", "False"):
    return text == "True"
  if text == "None":
    return None
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def read_opt_txt(path) -> dict[str, Any]:
  """The official options file: `key: value` lines (non-defaults suffixed `[default: x]`) between
  `----------------- Options ---------------` and `----------------- End -------------------` markers."""
  text = pathlib.Path(path).read_text()
  opts: dict[str, Any] = {}
  for line in text.splitlines():
    line = line.strip()
    if not line or line.startswith("---"):
      continue
    if ":" not in line:
      raise ConversionError(f"{path}: cannot parse line {line!r} (expected 'key: value [default: x]')")
    key, value = line.split(":", 1)
    value = re.sub(r"\s*\[default:.*\]\s*$", "", value).strip()
    opts[key.strip()] = _parse_value(value)
  if not opts:
    raise ConversionError(f"{path}: no options found (is this the run's opt.txt?)")
  return opts


def _norm_G(norm: str) -> dict[str, Any]:
  """'spectralspadesyncbatch3x3' -> spectral, param-free norm, kernel size."""
  m = re.fullmatch(r"(spectral)?spade(syncbatch|batch|instance)(\d+)x\d+", norm)
  if not m:
    raise ConversionError(f"norm_G={norm!r} is not a SPADE norm of the form [spectral]spade<syncbatch|batch|"
                          "instance><k>x<k>")
  return {"spectral_G": bool(m.group(1)), "param_free_norm": m.group(2), "spade_kernel": int(m.group(3))}


def opt_to_overrides(opt: Mapping[str, Any]) -> dict[str, Any]:
  """Official option names -> our config keys ('data.crop_size', ...). Options that do not shape the model or its
  inputs (paths, batch size, lr, ...) are ignored."""
  out: dict[str, Any] = {}
  if opt.get("netG", "spade") != "spade":
    raise ConversionError(f"opt.txt has netG={opt['netG']!r}; only the SPADE generator ('spade') is supported")
  if opt.get("z_dim", 256) != 256:
    raise ConversionError(f"opt.txt has z_dim={opt['z_dim']}; the official encoder hard-codes 256")
  for key in ("label_nc", "contain_dontcare_label", "no_instance", "crop_size", "load_size", "aspect_ratio",
              "no_flip"):
    if key in opt:
      out[f"data.{key}"] = opt[key]
  if "preprocess_mode" in opt:
    out["data.preprocess"] = opt["preprocess_mode"]
  for key in ("ngf", "ndf", "num_D", "n_layers_D", "use_vae", "num_upsampling_layers"):
    if key in opt:
      out[f"model.{key}"] = opt[key]
  if "norm_G" in opt:
    out.update({f"model.{k}": v for k, v in _norm_G(opt["norm_G"]).items()})
  for net in ("D", "E"):
    if f"norm_{net}" in opt:
      out[f"model.spectral_{net}"] = str(opt[f"norm_{net}"]).startswith("spectral")
  return out
