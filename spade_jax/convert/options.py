"""Option resolution: preset < opt.txt < flags for what the weights do not determine; the weights for what they do
(an explicit option contradicting them is an error, a preset default is replaced)."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from spade_jax import config as spade_config
from spade_jax.convert.opt_txt import opt_to_overrides
from spade_jax.semantics import semantic_channels
from spade_jax.weights.official import ConversionError

_DATASET_MODE_TO_PRESET = {"coco": "coco_stuff", "ade20k": "ade20k", "cityscapes": "cityscapes", "custom": "custom"}


def load_preset(name: str):
  """The library preset `name` (spade_jax.config.preset), or the get_config() of a config .py file at that path."""
  path = pathlib.Path(name)
  if path.suffix == ".py" and path.is_file():
    return spade_config.from_file(path)
  if name not in spade_config.PRESETS:
    raise ConversionError(f"unknown preset {name!r}; expected one of {', '.join(spade_config.PRESETS)} or a path to "
                          "a config .py")
  return spade_config.preset(name)


def _guess_presets(semantic_nc: int) -> list[str]:
  out = []
  for name in ("coco_stuff", "ade20k", "cityscapes"):
    d = load_preset(name).data
    if semantic_channels(d) == semantic_nc:
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
    spade_config.put(self.config, key, value)
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
  label = preset if preset in spade_config.PRESETS else pathlib.Path(preset).name
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
    for key in ("model.num_D", "model.n_layers_D", "model.ndf", "model.spectral_D", "model.discriminator_norm"):
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
    for key in ("model.encoder_input_size", "model.spectral_E", "model.encoder_norm"):
      _from_weights(opts, key, e_info[key], "encoder")
  spade_config.validate(opts.config)  # the options as written with the checkpoint: every bad value named now
  return opts


def _all_keys(config, prefix=""):
  for k, v in config.items():
    name = f"{prefix}{k}"
    if hasattr(v, "items"):
      yield from _all_keys(v, name + ".")
    else:
      yield name


def _from_weights(opts: _Options, key: str, value, network: str):
  current = spade_config.get(opts.config, key)
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
  from spade_jax.models.generator import latent_size
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
