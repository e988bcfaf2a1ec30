"""The conversion itself: official state dicts -> our variables (checked both ways), a summary, and the Orbax
checkpoint `{out}/checkpoints/0/{state,config}` plus `{out}/conversion.json`."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from spade_jax.convert.opt_txt import read_opt_txt
from spade_jax.convert.options import resolve_options
from spade_jax.convert.shapes import _describe, detect_network, infer_discriminator, infer_encoder, infer_generator
from spade_jax.weights.official import ConversionError

_NETWORK_NAMES = {"G": "generator", "D": "discriminator", "E": "encoder"}


@dataclasses.dataclass
class Converted:
  config: Any                     # ml_collections.ConfigDict
  state: dict                     # {'step', 'g', ['d'], ['e']} of numpy arrays
  summary: str
  info: dict                      # what goes to conversion.json
  directory: pathlib.Path | None  # the workdir written (None when out=None)


def _load(path_or_sd, what: str, expect: str):
  from spade_jax.weights.pth import load_state_dict
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
  import jax

  from spade_jax.weights.official import (
    check_state_dict,
    check_variables,
    expected_state_dict,
    torch_to_variables,
  )
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
  import jax.numpy as jnp

  from spade_jax.models import (
    build_discriminator,
    build_encoder,
    build_generator,
    count_params,
    output_size,
  )
  from spade_jax.semantics import semantic_channels

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
  s = semantic_channels(config.data)
  sem = jnp.zeros((1, h, w, s))
  G = build_generator(config)
  z = jnp.zeros((1, G.z_dim)) if config.model.use_vae else None
  latent_hw = None
  if config.model.use_vae:
    from spade_jax.models.generator import latent_size
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
               f"{m.param_free_norm} {m.spade_kernel}x{m.spade_kernel}, "
               f"spectral norm {'on' if m.spectral_G else 'off'}")
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
  import shutil

  from spade_jax.checkpoints import checkpoint_dir
  from spade_jax.training.checkpointer import Checkpointer
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
