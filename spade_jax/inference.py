"""Label maps in, images out: the notebook API.

  import spade_jax
  model = spade_jax.load("runs/coco_pretrained")            # a workdir, its checkpoints/ folder, or checkpoints/<step>
  images = model.synthesize(Image.open("000000000139.png"), instances=Image.open("inst/000000000139.png"))

`load` reads only the generator (and the VAE encoder) of a checkpoint onto one device, whatever mesh wrote it, and
rebuilds the networks from the config saved with it. Inputs follow the data pipeline's rules: label and instance maps
are resized to the model's output size with PIL NEAREST, style images with PIL BICUBIC; raw label 255 is the
don't-care slot; ids are checked against the model's classes. Outputs are uint8 RGB, truncated like the official
`to_uint8` (the official tensor2im: clip((x + 1) / 2 * 255, 0, 255).astype(uint8)).
"""
from __future__ import annotations

import functools
import os
import warnings

import jax
import numpy as np
from PIL import Image

from spade_jax import platforms
from spade_jax.checkpoints import resolve_checkpoint
from spade_jax.errors import UserError
from spade_jax.images import to_uint8
from spade_jax.semantics import label_channels

__all__ = ["load", "Synthesizer", "resolve_checkpoint", "to_uint8"]


def load(checkpoint, step: int | None = None, *, device=None, use_ema: bool = True) -> Synthesizer:
  """A Synthesizer for the checkpoint (latest step unless `step`), on one device (default: the first).

  Runs trained with `train.ema_decay > 0` keep an exponential moving average of the generator (and encoder)
  weights; it is used unless `use_ema=False` (`Synthesizer.weights` says which).
  """
  from spade_jax.checkpoints import latest_step, read_config_dir, restore_subtrees
  from spade_jax.config import from_dict
  from spade_jax.networks import synthesis_variables
  ckdir, step = resolve_checkpoint(checkpoint, step)
  config = from_dict(read_config_dir(ckdir, step))  # an older run's config: completed from the schema
  if step is None:
    step = latest_step(ckdir)
  trees = restore_subtrees(ckdir, ("g", "e") + (("ema",) if use_ema else ()), step, device=device)
  if "g" not in trees:
    raise UserError(f"checkpoint {ckdir}/{step} has no generator ('g') in its state")
  g, e = synthesis_variables(trees)
  return Synthesizer(config, g, e, step=step, source=str(ckdir), weights="ema" if "ema" in trees else "live")


def _as_items(x, what: str, color_ok: bool) -> list:
  """One input or a batch -> a list of PIL images / 2-D (or HxWx3) arrays."""
  if x is None:
    return []
  if isinstance(x, (str, os.PathLike, Image.Image)):
    return [x]
  if isinstance(x, (list, tuple)):
    return list(x)
  a = np.asarray(x)
  if a.ndim == 2:
    return [a]
  if a.ndim == 3:
    if color_ok and a.shape[-1] in (3, 4):
      return [a]  # one colour image; (N, H, 3) batches of 3-pixel-wide maps are not a thing
    return list(a)
  if a.ndim == 4 and color_ok and a.shape[-1] in (3, 4):
    return list(a)
  raise UserError(f"{what}: expected an HxW map, an NxHxW batch, a PIL image or a list of them; got an array of "
                   f"shape {a.shape}")


def _open(item):
  if isinstance(item, (str, os.PathLike)):
    with Image.open(item) as im:
      im.load()
      return im.copy()
  return item


def _generate(nets, g_vars, label, instance, z):
  return nets.synthesize(g_vars, {"label": label, "instance": instance}, z)


def _encode(nets, e_vars, image):
  return nets.encode(e_vars, image)


@functools.cache
def _jitted(platform: str):
  """(generate, encode) for `platform`, jitted once per process (after the backend is up)."""
  options = platforms.compiler_options(platform)
  return (jax.jit(_generate, static_argnums=0, compiler_options=options),
          jax.jit(_encode, static_argnums=0, compiler_options=options))


class Synthesizer:
  """A generator (+ VAE encoder) ready for inference: `synthesize(labels, instances=None, style=None, seed=0)`.

  Attributes: `config`, `image_size` (H, W), `num_classes` (label_nc + don't-care slot), `class_names`, `palette`
  (uint8 [num_classes, 3], the data set's colours: `colorize(labels)`), `use_vae`, `has_encoder`, `step`,
  `weights` ('ema' or 'live').
  """

  def __init__(self, config, g_variables, e_variables=None, *, step: int | None = None, source: str = "",
               weights: str = "live"):
    from spade_jax import colormap
    from spade_jax.models import output_size
    from spade_jax.networks import Networks
    self.config = config
    self.step, self.source, self.weights = step, source, weights
    d, m = config.data, config.model
    self.label_nc, self.contain_dontcare_label, self.no_instance = d.label_nc, d.contain_dontcare_label, d.no_instance
    self.num_classes = label_channels(d)
    self.dataset = d.dataset
    self.image_size = tuple(output_size(d.crop_size, d.aspect_ratio, m.num_upsampling_layers))
    self.class_names, self.palette = colormap.for_data(d)
    self.use_vae = bool(m.use_vae)
    leaf = jax.tree.leaves(g_variables)[0]  # the generator runs where its weights lie
    platform = platforms.platform_of(leaf.devices() if isinstance(leaf, jax.Array) else None)
    self.nets = Networks.from_config(config, platform=platform)
    self.generator = self.nets.G
    self.encoder = self.nets.E if e_variables is not None else None
    self.has_encoder = self.encoder is not None
    self._g_vars = {k: v for k, v in g_variables.items() if k in ("params", "batch_stats", "spectral")}
    self._e_vars = ({k: v for k, v in e_variables.items() if k in ("params", "batch_stats", "spectral")}
                    if self.encoder is not None else None)
    # Module-level jitted functions with the (hashable) networks as static arguments: one compilation per network
    # and input shape, shared by every Synthesizer of the same architecture in the process.
    generate, encode = _jitted(platform)
    self._generate = functools.partial(generate, self.nets)
    self._encode = functools.partial(encode, self.nets)

  def __repr__(self):
    h, w = self.image_size
    return (f"Synthesizer({self.dataset}, {h}x{w}, {self.num_classes} classes"
            f"{', instance edges' if not self.no_instance else ''}, "
            f"{'VAE' + (' + encoder' if self.has_encoder else ', no encoder') if self.use_vae else 'no VAE'}, "
            f"step {self.step})")

  # -- input preparation --------------------------------------------------------------------------------------
  def _resize_ids(self, a: np.ndarray) -> np.ndarray:
    h, w = self.image_size
    if a.shape == (h, w):
      return a.astype(np.int32)
    if a.dtype == np.uint8:
      img = Image.fromarray(a)  # mode L
    else:
      if a.min(initial=0) < np.iinfo(np.int32).min or a.max(initial=0) > np.iinfo(np.int32).max:
        raise UserError("label / instance ids must fit in int32")
      img = Image.fromarray(a.astype(np.int32))  # mode I
    return np.asarray(img.resize((w, h), Image.Resampling.NEAREST)).astype(np.int32)

  def _ids(self, item, what: str, palette) -> tuple[np.ndarray, bool]:
    """-> (int32 ids at output size, decoded_from_colours)."""
    from spade_jax.colormap import decode_color_label
    item = _open(item)
    if isinstance(item, Image.Image):
      if item.mode in ("RGB", "RGBA"):
        a = np.asarray(item.convert("RGB"))
      elif item.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        a = np.asarray(item)
      else:
        raise UserError(f"{what}: unsupported PIL mode {item.mode!r} for a label/instance map")
    else:
      a = np.asarray(item)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
      if palette is False:
        raise UserError(f"{what} is an RGB image; instance maps must be single-channel ids")
      if np.issubdtype(a.dtype, np.floating):
        raise UserError(f"{what}: colour-coded labels must be uint8 RGB")
      return self._resize_ids(decode_color_label(a[..., :3], self.palette if palette is None else palette)), True
    if a.ndim != 2:
      raise UserError(f"{what}: expected an HxW map, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
      if not np.all(a == np.round(a)):
        raise UserError(f"{what}: label/instance maps must hold integer ids (got non-integer floats)")
      a = a.astype(np.int64)
    elif a.dtype == bool:
      a = a.astype(np.uint8)
    return self._resize_ids(a), False

  def prepare_labels(self, labels, palette=None) -> np.ndarray:
    """Label maps -> int32 (N, H, W) class ids at the output size, validated (255 -> the don't-care slot)."""
    from spade_jax.semantics import check_label_range
    items = _as_items(labels, "labels", color_ok=True)
    if not items:
      raise UserError("no label maps given")
    out = []
    for i, item in enumerate(items):
      name = str(item) if isinstance(item, (str, os.PathLike)) else f"labels[{i}]"
      ids, decoded = self._ids(item, name, palette)
      if not decoded:
        ids = np.where(ids == 255, self.label_nc, ids)  # the pipeline's unknown -> don't-care mapping
      check_label_range(ids, self.label_nc, self.contain_dontcare_label, source=name)
      out.append(ids)
    return np.stack(out)

  def prepare_instances(self, instances, n: int) -> np.ndarray:
    items = _as_items(instances, "instances", color_ok=False)
    if len(items) not in (1, n):
      raise UserError(f"{len(items)} instance maps for {n} label maps")
    arrs = [self._ids(it, str(it) if isinstance(it, (str, os.PathLike)) else f"instances[{i}]", False)[0]
            for i, it in enumerate(items)]
    return np.stack(arrs * (n if len(arrs) == 1 else 1))

  def prepare_style(self, style, n: int) -> np.ndarray:
    """Style images -> float32 (N, H, W, 3) in [-1, 1] at the output size (PIL BICUBIC, as the pipeline)."""
    from spade_jax.data.transforms import image_to_array
    items = _as_items(style, "style", color_ok=True)
    if len(items) not in (1, n):
      raise UserError(f"{len(items)} style images for {n} label maps (give one, or one per label map)")
    h, w = self.image_size
    arrs = []
    for it in items:
      it = _open(it)
      if not isinstance(it, Image.Image):
        a = np.asarray(it)
        if a.dtype != np.uint8 or a.ndim not in (2, 3):
          raise UserError(f"style images must be PIL images or uint8 HxWx3 arrays, got {a.dtype} {a.shape}")
        it = Image.fromarray(a)
      it = it.convert("RGB")
      if it.size != (w, h):
        it = it.resize((w, h), Image.Resampling.BICUBIC)
      arrs.append(image_to_array(it))
    return np.stack(arrs * (n if len(arrs) == 1 else 1))

  # -- public -------------------------------------------------------------------------------------------------
  def encode_style(self, style, n: int = 1):
    """Style image(s) -> (mu, logvar), each (N, 256), from the VAE encoder."""
    if not self.use_vae:
      raise UserError("this generator was trained without the VAE encoder (use_vae=False): it takes no style "
                       "image; its output is determined by the label map alone")
    if not self.has_encoder:
      raise UserError("this checkpoint has no encoder ('e'), so style images cannot be encoded; convert it with "
                       "--encoder=latest_net_E.pth, or synthesize with random styles (style=None, seed=...)")
    mu, logvar = self._encode(self._e_vars, self.prepare_style(style, n))
    return np.asarray(mu), np.asarray(logvar)

  def latents(self, n: int, style=None, seed: int = 0, num_samples: int = 1, sample_style: bool | None = None):
    """z of shape (n * num_samples, 256), row i * num_samples + k for label map i, sample k.

    No style: z_k ~ N(0, I) drawn from (seed, k), the same for every label map of the call (so an image does not
    depend on what else is in the batch). With a style: z = mu (sample_style False, the default for one sample) or
    mu + eps_k * exp(logvar / 2) with eps_k drawn from (seed, k) (sample_style True, the default for num_samples>1).
    """
    key = jax.random.key(seed)
    eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, k), (self.generator.z_dim,)))
                    for k in range(num_samples)])  # (S, 256)
    if style is None:
      return np.tile(eps, (n, 1)).astype(np.float32)
    mu, logvar = self.encode_style(style, n)
    if sample_style is None:
      sample_style = num_samples > 1
    mu, logvar = np.repeat(mu, num_samples, 0), np.repeat(logvar, num_samples, 0)
    if not sample_style:
      return mu.astype(np.float32)
    return (mu + np.tile(eps, (n, 1)) * np.exp(np.float32(0.5) * logvar)).astype(np.float32)

  def synthesize(self, labels, instances=None, style=None, seed: int = 0, num_samples: int = 1, *,
                 palette=None, sample_style: bool | None = None, z=None, return_float: bool = False) -> np.ndarray:
    """Label map(s) -> uint8 RGB images (N, H, W, 3), or (N, num_samples, H, W, 3) when num_samples > 1.

    labels: an HxW id map (numpy / PIL 'L', 'P', 'I', or a path), an NxHxW batch, or a list. Colour-coded RGB label
      images are decoded with `palette` (default: this model's `palette`).
    instances: instance-id maps, one per label map (or one for all); used for the edge channel of models trained
      with instances. None there: the label map's own class boundaries stand in (with a warning).
    style (VAE models only): image(s) whose encoding gives z; without it z is random, drawn from `seed`.
    seed, num_samples: multimodal synthesis (VAE models): sample k uses the noise of (seed, k).
    z: explicit latent codes (N * num_samples, 256) for VAE models, instead of style / seed.
    return_float: the generator's raw [-1, 1] float32 output instead of uint8.
    """
    if num_samples < 1:
      raise UserError(f"num_samples must be >= 1, got {num_samples}")
    if not self.use_vae:
      if style is not None:
        raise UserError("this generator was trained without the VAE encoder (use_vae=False): it takes no style "
                         "image; its output is determined by the label map alone")
      if num_samples > 1:
        raise UserError("num_samples > 1 needs a VAE generator; this one (use_vae=False) is deterministic")
    label = self.prepare_labels(labels, palette)
    n = len(label)
    instance = None
    if not self.no_instance:
      if instances is None:
        warnings.warn("this model uses instance edges but no instance maps were given: using the label maps' class "
                      "boundaries instead", stacklevel=2)
        instance = label
      else:
        instance = self.prepare_instances(instances, n)
    elif instances is not None:
      warnings.warn("this model was trained without instance maps (no_instance=True); `instances` is ignored",
                    stacklevel=2)
    if z is not None:
      if not self.use_vae:
        raise UserError("z was given, but this generator (use_vae=False) takes no latent code")
      if style is not None:
        raise UserError("give either z or style, not both")
      z = np.asarray(z, np.float32)
      if z.shape != (n * num_samples, self.generator.z_dim):
        raise UserError(f"z must have shape ({n * num_samples}, {self.generator.z_dim}), got {z.shape}")
    elif self.use_vae:
      z = self.latents(n, style, seed, num_samples, sample_style)
    if num_samples > 1:
      label = np.repeat(label, num_samples, 0)
      instance = None if instance is None else np.repeat(instance, num_samples, 0)
    out = np.asarray(self._generate(self._g_vars, label, instance, z))
    out = out if return_float else to_uint8(out)
    if num_samples > 1:
      out = out.reshape(n, num_samples, *out.shape[1:])
    return out

  def colorize(self, labels, palette=None) -> np.ndarray:
    """Label maps -> uint8 RGB visualisations (N, H, W, 3) in this model's colours, at the output size."""
    from spade_jax.colormap import colorize
    return colorize(self.prepare_labels(labels, palette), self.palette)
