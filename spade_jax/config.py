"""The config schema: every key the library reads, with its default, plus the per-data-set facts and presets.

Every number is the official SPADE default unless a comment says otherwise. The library owns this schema so that
code can read `config.x.y` without fallbacks: configs built here are complete, and configs read back from older
checkpoints are completed once, by `from_dict`. The top-level `configs/*.py` files are user presets built on it.

  from spade_jax import config as spade_config
  c = spade_config.preset("cityscapes")     # coco_stuff | ade20k | cityscapes | custom | demo | default
  c = spade_config.from_dict(saved_dict)    # an older checkpoint's config: missing keys filled, unknown ones refused
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

from spade_jax.errors import UserError

__all__ = ["defaults", "get_config", "DATASETS", "PRESETS", "for_dataset", "preset", "from_dict", "unknown_keys",
           "validate", "CHOICES", "get", "put", "as_bool", "STATE_KEYS", "SYNTHESIS_KEYS", "state_mismatch"]


def defaults() -> ml_collections.ConfigDict:
  """The complete schema with its defaults (the 'custom' data set, paper-size model)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = d = ml_collections.ConfigDict()
  d.dataset = "custom"          # coco_stuff | ade20k | cityscapes | custom | tfds
  d.root = ""                   # dataroot of the official layouts
  d.image_dir = ""              # custom layout
  d.label_dir = ""
  d.instance_dir = ""           # '' = none
  d.tfds_name = ""              # a tfds data set prepared as ArrayRecord (read without TensorFlow)
  d.tfds_data_dir = ""
  d.label_nc = 13               # classes, not counting the don't-care slot
  d.contain_dontcare_label = False  # label 255 -> an extra "unknown" channel
  d.no_instance = True          # False: append the instance-edge channel
  d.preprocess = "resize_and_crop"
  d.load_size = 286
  d.crop_size = 256
  d.aspect_ratio = 1.0
  d.no_flip = False
  d.on_bad_sample = "error"     # error | skip (logged, counted)
  d.workers = 0                 # grain worker processes
  d.prefetch = 4                # batches read ahead per worker
  d.max_dataset_size = 0        # 0 = all
  d.coco_no_portraits = False   # COCO-Stuff: leave out the portrait-orientation images (official --coco_no_portraits)
  d.demo_generate = False       # True: write the generated demo data set to `root` on first use (spade_jax.data.demo)
  d.demo_num_train = 512        # images the demo generator writes per split
  d.demo_num_val = 32

  c.model = m = ml_collections.ConfigDict()
  m.ngf = 64
  m.num_upsampling_layers = "normal"  # normal | more | most
  m.use_vae = False
  m.z_dim = 256                       # the style code's width (official --z_dim; its encoder hard-codes 256, so
                                      # official checkpoints have 256)
  m.param_free_norm = "syncbatch"     # syncbatch | batch | instance  (official norm_G 'spectralspadesyncbatch3x3')
  m.spade_kernel = 3
  m.spectral_G = True
  m.ndf = 64
  m.num_D = 2
  m.n_layers_D = 4
  m.spectral_D = True                 # official norm_D 'spectralinstance'
  m.discriminator_norm = "instance"   # instance | none: norm_D's sub-norm ('spectralinstance' / 'spectral': convs
                                      # with bias, no norm)
  m.spectral_E = True                 # official norm_E 'spectralinstance'
  m.encoder_norm = "instance"         # instance | none: norm_E's sub-norm ('spectralinstance' / 'spectral'); none
                                      # keeps the photo's global colour in the style code (the demo uses it)
  m.encoder_input_size = 256          # official: the encoder always resizes to 256x256
  # Speed and memory (none changes the variables, so official checkpoints convert either way):
  m.dtype = "float32"                 # compute dtype: float32 | bfloat16 (params, optimiser, norm statistics and
                                      # spectral-norm power iterations stay float32)
  m.remat_G = False                   # recompute generator ResBlk activations in the backward pass (less memory)
  m.remat_D = False                   # the same per discriminator scale
  m.spade_label_conv = "auto"         # dense | gather (SPADE's label conv as row gathers over one-hot ids) | auto:
                                      # gather on the CPU backend (faster there, README "On CPU"), dense elsewhere

  c.loss = l = ml_collections.ConfigDict()
  l.lambda_feat = 10.0      # 0 disables feature matching (official --no_ganFeat_loss)
  l.lambda_vgg = 10.0       # 0 disables the VGG loss (official --no_vgg_loss); required when no VGG weights exist
  l.lambda_kld = 0.05
  l.vae_warmup_steps = 0    # > 0 (not official): the KLD weight and the posterior noise rise linearly from 0 over
                            # these steps, so that G learns to read the style code before it is noisy (the demo)
  l.lambda_colour = 0.0     # > 0 (not official): L1 between fake and real colours averaged over colour_cell^2 cells
  l.colour_cell = 8         # (spade_jax.losses.colour_loss; README "The demo": a photo's style is its colours)
  l.kld_free_nats = 0.0     # > 0 (not official): each image's KL below this many nats costs nothing
  l.kld_free_nats_decay = ()  # (start, end): the free nats fall linearly to 0 from step start to end (official KL
                            # from there on, so that random codes cover the styles as the data does); (): constant
  l.lambda_kld_aggregate = 0.0  # > 0 (not official): the batch's codes, fitted by a Gaussian, against the prior
                            # (spade_jax.losses.kld_aggregate), so that random codes cover the styles as the data does
  l.kld_aggregate_start = 0  # that term counts from this step on
  l.kld_aggregate_fit = "diagonal"  # diagonal (per dimension) | full (full covariance; pulls the styles together)
  l.perceptual_net = "vgg19"  # the perceptual loss's network (weight lambda_vgg): vgg19 (official, pretrained) |
                            # demo_segmenter (a demo segmenter the run trains itself, seed 1, where no VGG exists)
  l.perceptual_start = 0    # > 0 (not official): the perceptual loss counts from this step on (the demo: once the
                            # styles are learned, so that a style-blind perceptual net cannot erase them)
  l.vgg_input_norm = "official"  # official: [-1, 1] as is | imagenet: mean/std normalised (imaginaire)
  l.vgg_weights = ""        # path to vgg19-dcbb9e9d.pth; '' = the download cache

  c.optim = o = ml_collections.ConfigDict()
  o.lr = 2e-4               # base lr; TTUR gives G lr/2 and D lr*2
  o.no_TTUR = False         # True: G = D = lr, betas (0.5, 0.999)
  o.beta1 = 0.0             # TTUR betas (the maintainer confirmed 0.9, not the paper's 0.999)
  o.beta2 = 0.9

  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 32         # global batch (paper: 32 on 8 GPUs)
  t.niter = 50              # epochs at constant lr (official default)
  t.niter_decay = 0         # epochs of linear decay to 0 after niter
  t.num_steps = 0           # > 0 overrides the epoch count (e.g. a quick run)
  t.log_every = 50          # steps between scalar logs (also the NaN check)
  t.sample_every = 1000     # steps between sample grids (label | synthesis | real)
  t.checkpoint_every = 2000
  t.keep_checkpoints = 3
  t.progress_every_secs = 30.0
  t.init_from = ""          # a workdir or converted official checkpoint to start G (and D, E) from
  t.use_shard_map = False   # per-device step with explicit pmean instead of jit over global arrays
  t.grad_accum = 1          # micro-batches per update: the global batch is split k ways (memory / k per step)
  t.ema_decay = 0.0         # > 0: keep an EMA of G (+ E) weights for eval and synthesis (imaginaire: 0.9999)
  t.ema_start = 1000        # steps before which the EMA copies the weights (imaginaire: 1000)

  c.eval = e = ml_collections.ConfigDict()  # evaluation: eval.py's options and periodic evaluation in training
  e.every_steps = 0         # > 0: FID and segmentation scores every N steps and at the end, on the training mesh;
                            # -1: at the end only; 0: never (eval.py evaluates any checkpoint)
  e.num_images = 0          # validation images per evaluation (0 = the whole split)
  e.batch_size = 8          # rounded up to a multiple of the device count
  e.fid = True
  e.inception_weights = ""  # '' = the download cache; 'random' only for smoke tests
  e.segmenter = "auto"      # auto (the data set's network) | none
  e.segmenter_weights = ""  # DRN .pth (Cityscapes, required); 'enc.pth,dec.pth' (ADE20K); DeepLab .pth (COCO)
  e.demo_segmenter_steps = 0  # 0 = default (also the steps of loss.perceptual_net=demo_segmenter's segmenter)
  e.grid_size = 8           # samples in grid.png (label | synthesis | real)
  e.fid_cache = ""          # folder of cached real-image FID statistics ('' = <weights cache>/fid_stats)
  e.use_ema = True          # the EMA generator weights when the run keeps them (train.ema_decay > 0)

  c.parallel = p = ml_collections.ConfigDict()
  p.num_data = -1           # devices on the data axis (-1 = all devices of all hosts)
  p.shard_params = False    # FSDP-style: store large parameters and optimiser moments split over the devices
  return c


get_config = defaults  # the ml_collections config-file convention


# What each data set needs beyond the defaults: its label layout, and for Cityscapes its shape and the official
# batch size. `train.niter` / `train.niter_decay` follow the paper's epoch counts.
DATASETS: dict[str, dict[str, Any]] = {
    # COCO-Stuff: 182 classes + unlabeled, instance edges: semantic_nc 184, 256x256, 'normal' upsampling.
    "coco_stuff": {"data.label_nc": 182, "data.contain_dontcare_label": True, "data.no_instance": False,
                   "train.niter": 100,  # paper: 100 epochs (recalled; see docs/spade_reference.md §8)
                   "train.niter_decay": 0},
    # ADE20K (ADEChallengeData2016): 150 classes + "other" as channel 0, no instances: semantic_nc 151, 256x256.
    "ade20k": {"data.label_nc": 150, "data.contain_dontcare_label": True, "data.no_instance": True,
               "train.niter": 100, "train.niter_decay": 100},  # paper: 200 epochs, linear decay over the last 100
    # Cityscapes: 35 label ids + instance edges: semantic_nc 36, 256x512 ('fixed' resize), 'more' upsampling.
    "cityscapes": {"data.label_nc": 35, "data.contain_dontcare_label": False, "data.no_instance": False,
                   "data.preprocess": "fixed", "data.load_size": 512, "data.crop_size": 512,
                   "data.aspect_ratio": 2.0, "model.num_upsampling_layers": "more",
                   "train.batch_size": 16,  # official Cityscapes default (paper: 32)
                   "train.niter": 100, "train.niter_decay": 100},  # paper: 200 epochs, linear decay over the last 100
    # Your own paired folders. no_instance unlike the official default, which crashes without an instance dir
    # (issue #163).
    "custom": {"data.no_instance": True},
}


def _demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Generated "landscapes" (7 classes; day / sunset / night styles) written once to $SPADE_DEMO_DATA or
  data/demo, read through the same Grain file pipeline as real data; small enough to train on a CPU."""
  c.data.dataset = "custom"
  c.data.root = os.environ.get("SPADE_DEMO_DATA", "data/demo")
  c.data.demo_generate = True   # write the data set on first use (spade_jax.data.demo)
  c.data.demo_num_train = 512
  c.data.demo_num_val = 32
  c.data.label_nc = 7
  c.data.contain_dontcare_label = False
  c.data.no_instance = True
  c.data.preprocess = "resize_and_crop"
  c.data.load_size = 64
  c.data.crop_size = 64
  c.model.ngf = 16
  c.model.ndf = 16
  c.model.use_vae = True        # style-guided and multimodal synthesis
  c.model.encoder_input_size = 128
  # The style (day / sunset / night) is the photo's global colour; README "The demo" has the measurements (#27).
  # The official encoder's instance norm (norm_E 'spectralinstance') removes most of it from the code; 'spectral'
  # (an official norm_E too) keeps it. At the official lr 2e-4 G did not learn to read z in time.
  c.model.encoder_norm = "none"
  c.model.discriminator_norm = "none"  # official norm_D 'spectral' (convs with bias, no instance norm)
  c.optim.lr = 1e-3             # TTUR: G 5e-4, D 2e-3
  # Not official (README "Loss options beyond the official recipe"): the colour loss says directly what a style
  # is; the warm-up lets G read the codes before they are noisy; the free nats keep the KL from pulling two
  # styles' codes together before G tells them apart, and fall to 0 from step 240 (the official KL at the end) so
  # that random codes cover the styles; the aggregate KL from step 240 holds the codes' spread to the prior's, so that
  # random codes land on every style (without it the codes spread over twice the prior's width, with sunset at the
  # centre, and random codes drew an outer style as rarely as 9%; with weight 4 seed 2 lost its styles); the
  # perceptual loss, from a second demo segmenter (no pretrained VGG19 offline), counts once the styles are learned
  # (its features are largely style-blind) and brings the segmentation score to 0.96-1.00x of its ceiling.
  c.loss.lambda_colour = 10.0
  c.loss.vae_warmup_steps = 240
  c.loss.kld_free_nats = 6.0
  c.loss.kld_free_nats_decay = (240, 400)
  c.loss.lambda_kld_aggregate = 1.0
  c.loss.kld_aggregate_start = 240
  c.loss.lambda_vgg = 20.0
  c.loss.perceptual_net = "demo_segmenter"
  c.loss.perceptual_start = 240
  c.train.ema_decay = 0.99
  c.train.ema_start = 200
  c.train.batch_size = 8
  c.train.num_steps = 400
  c.train.log_every = 50
  c.train.sample_every = 160
  c.train.checkpoint_every = 160
  c.train.progress_every_secs = 15.0
  # At the end: the segmentation score of the synthesis (a small segmenter trained on the real demo images, 17 s
  # on first use) next to its real-image ceiling, and the style scores. FID needs the pytorch-fid Inception weights
  # (downloaded once): --config.eval.fid=True.
  c.eval.every_steps = 80       # every 80 steps and at the end: the log and report show the styles being learned
  c.eval.fid = False
  return c


PRESETS = ("coco_stuff", "ade20k", "cityscapes", "custom", "demo", "default")


def for_dataset(name: str) -> ml_collections.ConfigDict:
  """The defaults with data set `name`'s facts (one of DATASETS)."""
  if name not in DATASETS:
    raise UserError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
  c = defaults()
  c.data.dataset = name
  for key, value in DATASETS[name].items():
    put(c, key, value)
  return c


def preset(name: str) -> ml_collections.ConfigDict:
  """A named preset: a data set of DATASETS, 'demo' (the generated landscapes) or 'default' (the bare schema)."""
  if name == "default":
    return defaults()
  if name == "demo":
    return _demo(defaults())
  if name in DATASETS:
    return for_dataset(name)
  raise UserError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")


def from_file(path) -> ml_collections.ConfigDict:
  """get_config() of a config file (configs/*.py or your own), as `--config=` reads it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no config file {path}")
  spec = importlib.util.spec_from_file_location(f"_spade_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get(c, dotted: str):
  """`c.x.y` for 'x.y'."""
  for part in dotted.split("."):
    c = c[part]
  return c


def put(c, dotted: str, value) -> None:
  """Sets 'x.y' to `value`; text (from a command line or an official opt.txt) becomes the schema's type. A key the
  schema does not have, or text that is not of its type, is a UserError naming it."""
  *head, leaf = dotted.split(".")
  node = c
  for part in head:
    node = node[part] if part in node else None
    if node is None:
      break
  if node is None or leaf not in node:
    raise UserError(f"unknown config key {dotted!r}")
  old = node[leaf]
  try:
    if isinstance(old, bool) and not isinstance(value, bool):
      value = as_bool(value, dotted)
    elif isinstance(old, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
      value = float(value)
    elif isinstance(old, int) and not isinstance(old, bool) and isinstance(value, str):
      value = int(value)
  except ValueError:
    raise UserError(f"{dotted}: {value!r} is not a {type(old).__name__}") from None
  node[leaf] = value


def as_bool(value, what: str = "value") -> bool:
  """true/false, yes/no, on/off, 1/0 (any case) as a bool."""
  if isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ("1", "true", "yes", "y", "on"):
    return True
  if text in ("0", "false", "no", "n", "off"):
    return False
  raise UserError(f"{what}: expected true/false, got {value!r}")


def unknown_keys(d: Mapping[str, Any], schema=None, prefix: str = "") -> list[str]:
  """Dotted keys of `d` that the schema does not define."""
  schema = defaults() if schema is None else schema
  out = []
  for key, value in d.items():
    name = f"{prefix}{key}"
    if key not in schema:
      out.append(name)
    elif isinstance(schema[key], ml_collections.ConfigDict):
      if isinstance(value, Mapping):
        out += unknown_keys(value, schema[key], name + ".")
      else:
        out.append(name)  # a value where the schema has a section
  return out


def from_dict(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A complete, validated config from a dict read back from a checkpoint, possibly written by an older version:
  keys it lacks take the schema's defaults; keys the schema does not know are an error naming them (a newer or
  foreign config)."""
  if isinstance(d, ml_collections.ConfigDict):
    d = d.to_dict()
  unknown = unknown_keys(d)
  if unknown:
    raise UserError(f"config has keys this version of spade_jax does not know: {', '.join(sorted(unknown))}")
  c = defaults()
  _fill(c, d, "")
  return validate(c)


# The allowed values of every key that takes one of a few words (the modules that read them rely on this check).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("coco_stuff", "ade20k", "cityscapes", "custom", "tfds"),
    "data.preprocess": ("resize_and_crop", "scale_width_and_crop", "scale_shortside_and_crop", "fixed", "none",
                        "resize", "crop", "scale_width", "scale_shortside"),
    "data.on_bad_sample": ("error", "skip"),
    "model.num_upsampling_layers": ("normal", "more", "most"),
    "model.param_free_norm": ("syncbatch", "batch", "instance"),
    "model.encoder_norm": ("instance", "none"),
    "model.discriminator_norm": ("instance", "none"),
    "model.dtype": ("float32", "bfloat16"),
    "model.spade_label_conv": ("auto", "dense", "gather"),
    "loss.vgg_input_norm": ("official", "imagenet"),
    "loss.perceptual_net": ("vgg19", "demo_segmenter"),
    "loss.kld_aggregate_fit": ("diagonal", "full"),
    "eval.segmenter": ("auto", "none"),
}
_AT_LEAST = {  # key: smallest allowed value
    "data.label_nc": 1, "data.load_size": 1, "data.crop_size": 1, "data.workers": 0, "data.prefetch": 1,
    "data.max_dataset_size": 0, "data.demo_num_train": 1, "data.demo_num_val": 2,
    "model.ngf": 1, "model.spade_kernel": 1, "model.ndf": 1, "model.num_D": 1, "model.n_layers_D": 1,
    "model.z_dim": 1,
    "loss.lambda_feat": 0, "loss.lambda_vgg": 0, "loss.lambda_kld": 0, "loss.vae_warmup_steps": 0,
    "loss.perceptual_start": 0, "loss.kld_free_nats": 0, "loss.lambda_colour": 0, "loss.colour_cell": 1,
    "loss.lambda_kld_aggregate": 0, "loss.kld_aggregate_start": 0,
    "train.batch_size": 1, "train.niter": 0, "train.niter_decay": 0, "train.num_steps": 0, "train.log_every": 1,
    "train.sample_every": 1, "train.checkpoint_every": 1, "train.keep_checkpoints": 1, "train.grad_accum": 1,
    "train.ema_start": 0, "eval.every_steps": -1, "eval.num_images": 0, "eval.batch_size": 1,
    "eval.demo_segmenter_steps": 0, "eval.grid_size": 1,
}


# The keys that shape the networks' variables and the train state: a checkpoint is read back only by a config that
# agrees with it on each (the generator's and encoder's for synthesis, all of them to resume training). The rest
# (steps, logging, evaluation cadence, learning rates and schedule length, data location, loss weights, speed
# options such as dtype or remat) may change on resume.
SYNTHESIS_KEYS = ("data.label_nc", "data.contain_dontcare_label", "data.no_instance", "data.crop_size",
                  "data.aspect_ratio", "model.ngf", "model.num_upsampling_layers", "model.use_vae",
                  "model.param_free_norm", "model.spade_kernel", "model.spectral_G", "model.spectral_E",
                  "model.encoder_norm", "model.encoder_input_size")
STATE_KEYS = SYNTHESIS_KEYS + ("model.ndf", "model.num_D", "model.n_layers_D", "model.spectral_D",
                                "model.discriminator_norm")
_ENCODER_KEYS = ("model.spectral_E", "model.encoder_norm", "model.encoder_input_size")


def state_mismatch(saved: ml_collections.ConfigDict, requested: ml_collections.ConfigDict, where: str,
                   remedy: str = "or a new --workdir", keys=STATE_KEYS) -> str | None:
  """One line naming each key of `keys` on which `requested` differs from the config `saved` with the checkpoint
  in `where`, with both values; None when they agree. Training (the default keys) also needs a weight EMA
  (train.ema_decay > 0) in both or in neither."""
  no_encoder = not saved.model.use_vae and not requested.model.use_vae
  diffs = [k for k in keys if get(saved, k) != get(requested, k) and not (no_encoder and k in _ENCODER_KEYS)]
  was = [f"{k}={get(saved, k)!r}" for k in diffs]
  asks = [f"{k}={get(requested, k)!r}" for k in diffs]
  if keys is STATE_KEYS and (saved.train.ema_decay > 0) != (requested.train.ema_decay > 0):
    was.append(f"train.ema_decay={saved.train.ema_decay!r}")
    asks.append(f"train.ema_decay={requested.train.ema_decay!r}")
  if not was:
    return None
  if len(was) == 1:
    return (f"the checkpoint in {where} was trained with {was[0]}; this run asks for {asks[0].split('=', 1)[1]}: "
            f"use the same value, {remedy}")
  return (f"the checkpoint in {where} was trained with {', '.join(was)}; this run asks for {', '.join(asks)}: use "
          f"the same values, {remedy}")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c`, checked once where a config is loaded (train.py, eval.py, the converter, `from_dict`). Raises one
  UserError naming every bad key with its value and what it may be, so that no mistake waits for trace time or for
  the first bad sample."""
  bad = []
  for key, allowed in CHOICES.items():
    value = get(c, key)
    if value not in allowed:
      bad.append(f"{key}={value!r} (expected one of {', '.join(allowed)})")
  for key, low in _AT_LEAST.items():
    value = get(c, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
      bad.append(f"{key}={value!r} (expected a number >= {low})")
  d, m, t, o = c.data, c.model, c.train, c.optim
  if not d.aspect_ratio > 0:
    bad.append(f"data.aspect_ratio={d.aspect_ratio!r} (expected > 0)")
  if m.spade_kernel % 2 == 0:
    bad.append(f"model.spade_kernel={m.spade_kernel} (expected an odd size)")
  if m.num_upsampling_layers in CHOICES["model.num_upsampling_layers"] and d.crop_size >= 1 and d.aspect_ratio > 0:
    n_up = {"normal": 5, "more": 6, "most": 7}[m.num_upsampling_layers]
    sw = d.crop_size // 2 ** n_up
    if sw < 1 or round(sw / d.aspect_ratio) < 1:
      bad.append(f"data.crop_size={d.crop_size} (with aspect_ratio {d.aspect_ratio} and num_upsampling_layers "
                 f"{m.num_upsampling_layers!r} the generator's first grid is empty: use at least {2 ** n_up})")
  if m.use_vae and (m.encoder_input_size % 64 or m.encoder_input_size < 128):
    bad.append(f"model.encoder_input_size={m.encoder_input_size} (expected a multiple of 64, >= 128)")
  if not o.lr > 0:
    bad.append(f"optim.lr={o.lr!r} (expected > 0)")
  for key in ("optim.beta1", "optim.beta2", "train.ema_decay"):
    if not 0 <= get(c, key) < 1:
      bad.append(f"{key}={get(c, key)!r} (expected 0 <= value < 1)")
  decay = tuple(c.loss.kld_free_nats_decay)
  if decay and not (len(decay) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in decay)
                    and 0 <= decay[0] < decay[1]):
    bad.append(f"loss.kld_free_nats_decay={decay!r} (expected () or (start, end) steps, 0 <= start < end)")
  if not t.progress_every_secs > 0:
    bad.append(f"train.progress_every_secs={t.progress_every_secs!r} (expected > 0)")
  if t.batch_size >= 1 and t.grad_accum >= 1 and t.batch_size % t.grad_accum:
    bad.append(f"train.batch_size={t.batch_size} (expected a multiple of train.grad_accum={t.grad_accum})")
  if t.num_steps == 0 and t.niter + t.niter_decay <= 0:
    bad.append("train.num_steps=0 with train.niter + train.niter_decay = 0 (nothing to train: set one of them)")
  if c.parallel.num_data == 0 or c.parallel.num_data < -1:
    bad.append(f"parallel.num_data={c.parallel.num_data} (expected -1 for all devices, or >= 1)")
  if bad:
    raise UserError(f"bad config value{'s' if len(bad) > 1 else ''}: {'; '.join(bad)}")
  return c


def _fill(c: ml_collections.ConfigDict, d: Mapping[str, Any], prefix: str) -> None:
  for key, value in d.items():
    if isinstance(c[key], ml_collections.ConfigDict):
      _fill(c[key], value, f"{prefix}{key}.")
      continue
    try:
      c[key] = value
    except TypeError as e:
      raise UserError(f"config key {prefix}{key}: {value!r} does not fit the schema's {type(c[key]).__name__} "
                       f"({e})") from None
