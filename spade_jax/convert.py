"""Official SPADE PyTorch checkpoints (latest_net_G/D/E.pth) -> an Orbax checkpoint that training, eval, the
synthesis command and `spade_jax.load` read.

  python -m spade_jax.convert --generator=checkpoints/coco_pretrained/latest_net_G.pth --preset=coco_stuff \
      --out=runs/coco_pretrained
  python -m spade_jax.convert --generator=G.pth --discriminator=D.pth --encoder=E.pth --opt=opt.txt --out=DIR

What the weights determine is read from them: ngf, the input channels (semantic_nc), VAE or not (fc is a Linear),
`most` upsampling (up_4 present), the SPADE param-free norm (BatchNorm buffers -> syncbatch, none -> instance), the
SPADE kernel size, spectral norm or not; num_D / n_layers_D / ndf of D; the encoder's input size. What they do not
(crop size, aspect ratio, normal vs more upsampling, how semantic_nc splits into classes + don't-care + edges) comes,
from lowest to highest priority, from the `--preset`, the official `opt.txt`, and flags. An explicit option (opt.txt
or flag) that contradicts the weights is an error; a preset default that does is replaced by what the weights say.

Output: `{out}/checkpoints/0/{state,config}` with state = {'step': 0, 'g', ['d'], ['e']} (variable collections
'params', 'batch_stats', 'spectral'; no optimiser states) and config = the full ml_collections config as a dict, plus
`{out}/conversion.json` (sources, inferred options, parameter counts).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import pathlib
import re
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from spade_jax.weights.official import ConversionError

__all__ = ["convert", "main", "read_opt_txt", "infer_generator", "infer_discriminator", "infer_encoder",
           "detect_network", "ConversionError"]

PRESETS = ("coco_stuff", "ade20k", "cityscapes", "custom")
_DATASET_MODE_TO_PRESET = {"coco": "coco_stuff", "ade20k": "ade20k", "cityscapes": "cityscapes", "custom": "custom"}
_NETWORK_NAMES = {"G": "generator", "D": "discriminator", "E": "encoder"}


# ------------------------------------------------------------------------------------------------------------
# opt.txt
# ------------------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------------------
# What the weights say
# ------------------------------------------------------------------------------------------------------------

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
  return {"model.num_D": len(scales), "model.n_layers_D": len(groups) - 1, "model.ndf": int(w0[0]),
          "input_nc": int(w0[1]), "model.spectral_D": spectral}


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
  return {"ndf": int(ndf), "model.encoder_input_size": 64 * s, "model.spectral_E": spectral, "input_nc": int(cin)}


# ------------------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------------------

def load_preset(name: str):
  """configs/<name>.py's get_config() (name may also be a path to a config file)."""
  path = pathlib.Path(name)
  if path.suffix == ".py" and path.is_file():
    spec = importlib.util.spec_from_file_location(f"_spade_preset_{path.stem}", path)
    _ensure_configs_importable()
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()
  if name not in PRESETS and name not in ("default", "demo"):
    raise ConversionError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)} or a path to a config .py")
  _ensure_configs_importable()
  return importlib.import_module(f"configs.{name}").get_config()


def _ensure_configs_importable():
  try:
    importlib.import_module("configs.default")
  except ImportError:
    root = pathlib.Path(__file__).resolve().parents[1]
    if (root / "configs" / "default.py").is_file():
      sys.path.insert(0, str(root))
      importlib.invalidate_caches()
      importlib.import_module("configs.default")
    else:
      raise ConversionError(f"the configs/ presets are not importable (looked in {root}); run from the repository "
                            "root or pass --preset=path/to/config.py") from None


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _set(config, dotted, value):
  *head, leaf = dotted.split(".")
  node = config
  for part in head:
    node = node[part]
  if leaf not in node:
    raise ConversionError(f"unknown config key {dotted!r}")
  old = node[leaf]
  if isinstance(old, bool) and not isinstance(value, bool):
    value = _as_bool(value, dotted)
  elif isinstance(old, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
    value = float(value)
  elif isinstance(old, int) and not isinstance(old, bool) and isinstance(value, str):
    value = int(value)
  node[leaf] = value


def _as_bool(value, what="value"):
  if isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ("1", "true", "yes", "y", "on"):
    return True
  if text in ("0", "false", "no", "n", "off"):
    return False
  raise ConversionError(f"{what}: expected true/false, got {value!r}")


def _guess_presets(semantic_nc: int) -> list[str]:
  out = []
  for name in ("coco_stuff", "ade20k", "cityscapes"):
    d = load_preset(name).data
    if d.label_nc + int(d.contain_dontcare_label) + int(not d.no_instance) == semantic_nc:
      out.append(name)
  return out


@dataclasses.dataclass
class _Options:
  config: Any
  source: dict[str, str]          # config key -> 'preset X' | 'opt.txt' | 'flag' | 'weights'
  notes: list[str]

  def explicit(self, key):
    return self.source.get(key) in ("opt.txt", "flag")

  def put(self, key, value, source):
    _set(self.config, key, value)
    self.source[key] = source


def resolve_options(g_info, d_info=None, e_info=None, *, preset=None, opt=None, flags=None) -> _Options:
  """Preset < opt.txt < flags for what the weights do not determine; the weights for what they do."""
  flags = dict(flags or {})
  opt_over = opt_to_overrides(opt) if opt else {}
  if preset is None and opt and opt.get("dataset_mode") is not None:
    preset = _DATASET_MODE_TO_PRESET.get(str(opt["dataset_mode"]), "custom")
  if preset is None:
    guesses = _guess_presets(g_info["semantic_nc"])
    hint = (f" (semantic_nc {g_info['semantic_nc']} matches the {' / '.join(guesses)} preset)" if guesses else "")
    raise ConversionError("pass --preset=coco_stuff|ade20k|cityscapes|custom or --opt=opt.txt: the weights do not "
                          f"say the crop size, aspect ratio or upsampling mode{hint}")
  config = load_preset(preset)
  opts = _Options(config, {}, [])
  label = preset if preset in PRESETS else pathlib.Path(preset).name
  for key in _all_keys(config):
    opts.source[key] = f"preset {label}"
  for key, value in opt_over.items():
    opts.put(key, value, "opt.txt")
  for key, value in flags.items():
    opts.put(key, value, "flag")
  c = config

  # -- what the generator's weights say
  for key in ("model.ngf", "model.use_vae", "model.param_free_norm", "model.spade_kernel", "model.spectral_G"):
    _from_weights(opts, key, g_info[key], "generator")
  mode = c.model.num_upsampling_layers
  if g_info["most"] and mode != "most":
    if opts.explicit("model.num_upsampling_layers"):
      raise ConversionError(f"the generator has up_4 blocks, so num_upsampling_layers is 'most'; "
                            f"{opts.source['model.num_upsampling_layers']} says {mode!r}")
    opts.put("model.num_upsampling_layers", "most", "weights")
  elif not g_info["most"] and mode == "most":
    if opts.explicit("model.num_upsampling_layers"):
      raise ConversionError("the generator has no up_4 blocks, so num_upsampling_layers is 'normal' or 'more'; "
                            f"{opts.source['model.num_upsampling_layers']} says 'most'")
    opts.put("model.num_upsampling_layers", "normal", "weights")
  if g_info["model.use_vae"]:
    _check_latent(opts, g_info["latent_cells"], 16 * g_info["model.ngf"])
  _check_semantic_nc(opts, g_info["semantic_nc"], "the generator (head_0.norm_0.mlp_shared.0.weight)")

  # -- discriminator / encoder
  if d_info is not None:
    for key in ("model.num_D", "model.n_layers_D", "model.ndf", "model.spectral_D"):
      _from_weights(opts, key, d_info[key], "discriminator")
    if d_info["input_nc"] != g_info["semantic_nc"] + 3:
      raise ConversionError(
          f"the discriminator takes {d_info['input_nc']} input channels (discriminator_0.model0.0.weight), but the "
          f"generator's semantic_nc {g_info['semantic_nc']} + 3 image channels = {g_info['semantic_nc'] + 3}: the "
          "two files are from different runs")
  if e_info is not None:
    if not g_info["model.use_vae"]:
      raise ConversionError("an encoder was given, but the generator is not a VAE generator (its fc is a conv, "
                            "not a Linear taking z)")
    if e_info["ndf"] != g_info["model.ngf"]:
      raise ConversionError(f"the encoder has {e_info['ndf']} channels in layer1 but the official encoder uses "
                            f"the generator's ngf ({g_info['model.ngf']}): the files are from different runs")
    if e_info["input_nc"] != 3:
      raise ConversionError(f"the encoder's layer1 takes {e_info['input_nc']} channels, expected 3 (RGB)")
    for key in ("model.encoder_input_size", "model.spectral_E"):
      _from_weights(opts, key, e_info[key], "encoder")
  return opts


def _all_keys(config, prefix=""):
  for k, v in config.items():
    name = f"{prefix}{k}"
    if hasattr(v, "items"):
      yield from _all_keys(v, name + ".")
    else:
      yield name


def _from_weights(opts: _Options, key: str, value, network: str):
  current = _get(opts.config, key)
  if key == "model.param_free_norm" and value == "syncbatch" and current == "batch":
    return  # BatchNorm buffers look the same for syncbatch and batch
  if current == value:
    if not opts.explicit(key):
      opts.source[key] = "weights"
    return
  if opts.explicit(key):
    raise ConversionError(f"the {network}'s weights say {key.split('.')[-1]}={value!r}, but {opts.source[key]} "
                          f"says {current!r}: is it the right file?")
  opts.notes.append(f"{key}={value!r} from the {network}'s weights (the {opts.source[key]} has {current!r})")
  opts.put(key, value, "weights")


def _check_latent(opts: _Options, cells: int, channels: int):
  from spade_jax.models.generator import latent_size  # noqa: PLC0415
  d, m = opts.config.data, opts.config.model

  def fits(mode):
    try:
      sh, sw = latent_size(d.crop_size, d.aspect_ratio, mode)
    except ValueError:
      return False
    return sh * sw == cells

  if fits(m.num_upsampling_layers):
    return
  if m.num_upsampling_layers != "most" and not opts.explicit("model.num_upsampling_layers"):
    for mode in ("normal", "more"):
      if fits(mode):
        opts.notes.append(f"model.num_upsampling_layers={mode!r} from the VAE fc's latent grid of {cells} cells")
        opts.put("model.num_upsampling_layers", mode, "weights")
        return
  sh, sw = latent_size(d.crop_size, d.aspect_ratio, m.num_upsampling_layers)
  raise ConversionError(
      f"the VAE generator's fc.weight has {cells * channels} outputs = {channels} channels x {cells} latent cells, "
      f"but crop_size {d.crop_size} ({opts.source['data.crop_size']}), aspect_ratio {d.aspect_ratio} "
      f"({opts.source['data.aspect_ratio']}) and num_upsampling_layers {m.num_upsampling_layers!r} "
      f"({opts.source['model.num_upsampling_layers']}) give a {sh}x{sw} = {sh * sw}-cell grid; pass the run's "
      "--opt=opt.txt or --crop_size/--aspect_ratio/--num_upsampling_layers")


def _check_semantic_nc(opts: _Options, s: int, where: str):
  d = opts.config.data
  dc, edge = int(d.contain_dontcare_label), int(not d.no_instance)
  if d.label_nc + dc + edge == s:
    return
  src = lambda k: opts.source[f"data.{k}"]
  if not opts.explicit("data.label_nc") and d.dataset == "custom" and s - dc - edge >= 1:
    opts.notes.append(f"data.label_nc={s - dc - edge} from the weights' semantic_nc {s} (minus {dc} don't-care and "
                      f"{edge} edge channels)")
    opts.put("data.label_nc", s - dc - edge, "weights")
    return
  guesses = _guess_presets(s)
  hint = f" semantic_nc {s} is the {' / '.join(guesses)} preset's." if guesses else ""
  raise ConversionError(
      f"{where} takes semantic_nc={s} input channels, but the options give label_nc {d.label_nc} ({src('label_nc')})"
      f" + don't-care {dc} ({src('contain_dontcare_label')}) + instance edges {edge} ({src('no_instance')}) = "
      f"{d.label_nc + dc + edge}.{hint} Pass the right --preset, the run's --opt=opt.txt, or --label_nc / "
      "--contain_dontcare_label / --no_instance")


# ------------------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Converted:
  config: Any                     # ml_collections.ConfigDict
  state: dict                     # {'step', 'g', ['d'], ['e']} of numpy arrays
  summary: str
  info: dict                      # what goes to conversion.json
  directory: pathlib.Path | None  # the workdir written (None when out=None)


def _load(path_or_sd, what: str, expect: str):
  from spade_jax.weights.pth import load_state_dict  # noqa: PLC0415
  if isinstance(path_or_sd, Mapping):
    sd, name = dict(path_or_sd), f"<{what} state dict>"
  else:
    sd, name = load_state_dict(path_or_sd), str(path_or_sd)
  if sd and all(k.startswith("module.") for k in sd):  # saved from a DataParallel wrapper
    sd = {k[len("module."):]: v for k, v in sd.items()}
  kind = detect_network(sd)
  if kind != expect:
    found = {"G": "a generator", "D": "a discriminator", "E": "an encoder", "vgg19": "VGG19 weights",
             "pix2pixhd": "a pix2pixHD generator (not supported)"}.get(kind, "not a SPADE network")
    raise ConversionError(f"{name} was given as the {what}, but it is {found} ({_describe(sd)})")
  return sd, name


def _variables(sd, network, module, init_args, what, **kw):
  import jax  # noqa: PLC0415
  from spade_jax.weights.official import check_state_dict, check_variables, expected_state_dict, \
      torch_to_variables  # noqa: PLC0415
  abstract = dict(jax.eval_shape(lambda: module.init(jax.random.key(0), *init_args)))
  check_state_dict(sd, expected_state_dict(abstract, network), what)  # in the file's own key names
  variables = torch_to_variables(sd, network, **kw)
  check_variables(variables, abstract, what)  # and in ours (a guard on the key table itself)
  dtypes = {str(np.asarray(x).dtype) for x in jax.tree.leaves(variables)}
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
  return variables, dtypes


def convert(generator, discriminator=None, encoder=None, *, opt=None, preset: str | None = None,
            flags: Mapping[str, Any] | None = None, out=None, overwrite: bool = False) -> Converted:
  """Convert official state dicts (paths to .pth files, or {key: array} dicts) and, with `out`, write the Orbax
  checkpoint. `opt` is a path to opt.txt or a parsed dict; `flags` are config overrides {'data.crop_size': 512}."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from spade_jax.models import build_discriminator, build_encoder, build_generator, count_params, \
      output_size  # noqa: PLC0415
  from spade_jax.models.factory import semantic_nc  # noqa: PLC0415

  g_sd, g_name = _load(generator, "generator", "G")
  d_sd, d_name = _load(discriminator, "discriminator", "D") if discriminator is not None else (None, None)
  e_sd, e_name = _load(encoder, "encoder", "E") if encoder is not None else (None, None)
  opt_dict = (read_opt_txt(opt) if opt is not None and not isinstance(opt, Mapping) else opt)
  g_info = infer_generator(g_sd)
  d_info = infer_discriminator(d_sd) if d_sd is not None else None
  e_info = infer_encoder(e_sd) if e_sd is not None else None
  opts = resolve_options(g_info, d_info, e_info, preset=preset, opt=opt_dict, flags=flags)
  config = opts.config

  h, w = output_size(config.data.crop_size, config.data.aspect_ratio, config.model.num_upsampling_layers)
  s = semantic_nc(config.data)
  sem = jnp.zeros((1, h, w, s))
  G = build_generator(config)
  z = jnp.zeros((1, G.z_dim)) if config.model.use_vae else None
  latent_hw = None
  if config.model.use_vae:
    from spade_jax.models.generator import latent_size  # noqa: PLC0415
    latent_hw = latent_size(config.data.crop_size, config.data.aspect_ratio, config.model.num_upsampling_layers)
  state: dict[str, Any] = {"step": np.zeros((), np.int32)}
  dtypes = {}
  state["g"], dtypes["G"] = _variables(g_sd, "G", G, (sem, z), f"generator {g_name}", latent_hw=latent_hw)
  if d_sd is not None:
    state["d"], dtypes["D"] = _variables(d_sd, "D", build_discriminator(config), (jnp.zeros((1, h, w, s + 3)),),
                                         f"discriminator {d_name}")
  if e_sd is not None:
    state["e"], dtypes["E"] = _variables(e_sd, "E", build_encoder(config), (jnp.zeros((1, h, w, 3)),),
                                         f"encoder {e_name}")

  counts = {k: count_params(state[k.lower()]) for k in ("G", "D", "E") if k.lower() in state}
  files = {"G": g_name, "D": d_name, "E": e_name}
  m, d = config.model, config.data
  lines = ["SPADE checkpoint conversion"]
  for net, n in counts.items():
    sd = {"G": g_sd, "D": d_sd, "E": e_sd}[net]
    extra = "" if dtypes[net] == {"float32"} else f" (stored as {'/'.join(sorted(dtypes[net]))}, cast to float32)"
    lines.append(f"  {_NETWORK_NAMES[net]:<13} {files[net]}: {len(sd)} tensors -> {n:,} parameters{extra}")
  lines.append(f"  generator     ngf {m.ngf}, semantic_nc {s} = label_nc {d.label_nc} + don't-care "
               f"{int(d.contain_dontcare_label)} + edges {int(not d.no_instance)}, {m.num_upsampling_layers} "
               f"upsampling, {'VAE (z from the encoder / noise)' if m.use_vae else 'no VAE'}, SPADE "
               f"{m.param_free_norm} {m.spade_kernel}x{m.spade_kernel}, spectral norm {'on' if m.spectral_G else 'off'}")
  if d_info:
    lines.append(f"  discriminator num_D {m.num_D}, n_layers_D {m.n_layers_D}, ndf {m.ndf}")
  if e_info:
    lines.append(f"  encoder       input {m.encoder_input_size}x{m.encoder_input_size}, ndf {m.ngf}")
  lines.append(f"  data          {d.dataset}: crop_size {d.crop_size}, aspect_ratio {d.aspect_ratio} -> output "
               f"{h}x{w} (HxW), preprocess {d.preprocess}")
  shown = ("data.label_nc", "data.contain_dontcare_label", "data.no_instance", "data.crop_size", "data.aspect_ratio",
           "model.num_upsampling_layers", "model.ngf", "model.use_vae", "model.param_free_norm")
  lines.append("  sources       " + ", ".join(f"{k.split('.')[-1]}: {opts.source[k]}" for k in shown))
  lines += [f"  note          {n}" for n in opts.notes]
  info = {"files": {k: v for k, v in files.items() if v}, "parameters": counts,
          "sources": {k: opts.source[k] for k in shown}, "notes": opts.notes, "output_hw": [h, w],
          "semantic_nc": s}

  directory = None
  if out is not None:
    directory = _write(out, state, config, info, overwrite)
    lines.append(f"  written       {directory / 'checkpoints' / '0'}  (load: spade_jax.load({str(directory)!r}))")
  return Converted(config=config, state=state, summary="\n".join(lines), info=info, directory=directory)


def _write(out, state, config, info, overwrite) -> pathlib.Path:
  import shutil  # noqa: PLC0415
  from spade_jax.training.checkpoint import Checkpointer, checkpoint_dir  # noqa: PLC0415
  workdir = pathlib.Path(out).absolute()
  ckdir = pathlib.Path(checkpoint_dir(workdir))
  steps = sorted(p.name for p in ckdir.iterdir() if p.name.isdigit()) if ckdir.is_dir() else []
  if steps:
    if not overwrite:
      raise ConversionError(f"{ckdir} already holds checkpoints (steps {', '.join(steps)}); pass --overwrite to "
                            "replace a converted one, or choose another --out")
    if steps != ["0"]:
      raise ConversionError(f"{ckdir} holds training checkpoints (steps {', '.join(steps)}); refusing to overwrite: "
                            "choose another --out")
    shutil.rmtree(ckdir / "0")
  with Checkpointer(ckdir, max_to_keep=None, async_save=False) as ck:
    ck.save(0, state, config=config.to_dict())
  (workdir / "conversion.json").write_text(json.dumps(info, indent=2) + "\n")
  return workdir


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m spade_jax.convert",
      description="Convert official SPADE PyTorch checkpoints (latest_net_G/D/E.pth) to an Orbax checkpoint.")
  p.add_argument("--generator", "-G", required=True, help="latest_net_G.pth")
  p.add_argument("--discriminator", "-D", help="latest_net_D.pth (optional: lets training continue with this D)")
  p.add_argument("--encoder", "-E", help="latest_net_E.pth (VAE runs: style images -> z)")
  p.add_argument("--opt", help="the run's opt.txt (crop size, aspect ratio, upsampling mode, label_nc, ...)")
  p.add_argument("--preset", help=f"config preset: {', '.join(PRESETS)}, or a config .py "
                                  "(default: from opt.txt's dataset_mode)")
  p.add_argument("--out", required=True, help="output workdir; the checkpoint goes to OUT/checkpoints/0")
  p.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in OUT")
  for name, typ in (("label_nc", int), ("crop_size", int), ("load_size", int), ("aspect_ratio", float),
                    ("num_upsampling_layers", str), ("preprocess", str)):
    p.add_argument(f"--{name}", type=typ, default=None)
  for name in ("contain_dontcare_label", "no_instance"):
    p.add_argument(f"--{name}", nargs="?", const="true", default=None, metavar="BOOL")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="any config override, e.g. --set data.load_size=286 (repeatable)")
  return p


_FLAG_KEYS = {"label_nc": "data.label_nc", "crop_size": "data.crop_size", "load_size": "data.load_size",
              "aspect_ratio": "data.aspect_ratio", "preprocess": "data.preprocess",
              "num_upsampling_layers": "model.num_upsampling_layers",
              "contain_dontcare_label": "data.contain_dontcare_label", "no_instance": "data.no_instance"}


def main(argv: Sequence[str] | None = None) -> Converted:
  args = _parser().parse_args(argv)
  flags: dict[str, Any] = {}
  for name, key in _FLAG_KEYS.items():
    value = getattr(args, name)
    if value is not None:
      flags[key] = _as_bool(value, f"--{name}") if name in ("contain_dontcare_label", "no_instance") else value
  for item in args.set:
    if "=" not in item:
      raise ConversionError(f"--set {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    key = key.removeprefix("config.")
    flags[key] = _parse_value(value)
  result = convert(args.generator, args.discriminator, args.encoder, opt=args.opt, preset=args.preset, flags=flags,
                   out=args.out, overwrite=args.overwrite)
  print(result.summary)
  return result


if __name__ == "__main__":
  try:
    main()
  except (ConversionError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
