"""A tiny SPADE config and random batches for fast training tests."""
import numpy as np

from configs import default


def tiny_config(use_vae=True, lambda_vgg=0.0, crop=32):
  """Two discriminator scales of two conv groups each (the official four cost these compile-bound tests 30% more
  compile time; the iteration parity test restores four)."""
  c = default.get_config()
  c.data.label_nc = 5
  c.data.contain_dontcare_label = True
  c.data.no_instance = False
  c.data.load_size = crop
  c.data.crop_size = crop
  c.model.ngf = 4
  c.model.ndf = 4
  c.model.n_layers_D = 2
  c.model.use_vae = use_vae
  c.model.encoder_input_size = 128
  c.loss.lambda_vgg = lambda_vgg
  c.train.batch_size = 8
  return c


# The demo preset's recipe options off (the official losses, no EMA), for the tiny end-to-end runs of configs/demo.py:
# they cost those compile-bound tests 12 s each (measured), the perceptual segmenter trains 800 steps, and the
# warm-up test reads the KL from step 1. The demo's own runs are measured in the README; its step is traced in
# tests/models/test_recipe_options.py.
DEMO_RECIPE_OFF = {"loss.kld_free_nats": 0, "loss.lambda_colour": 0, "model.discriminator_norm": "instance",
                   "loss.lambda_vgg": 0.0, "train.ema_decay": 0.0, "loss.lambda_kld_aggregate": 0.0}


def random_batch(config, n=8, seed=0):
  rng = np.random.default_rng(seed)
  s = config.data.crop_size
  label = rng.integers(0, config.data.label_nc + 1, (n, s // 4, s // 4)).repeat(4, 1).repeat(4, 2)
  batch = {"image": rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32), "label": label.astype(np.int32)}
  if not config.data.no_instance:
    batch["instance"] = rng.integers(0, 3, (n, s // 8, s // 8)).repeat(8, 1).repeat(8, 2).astype(np.int32)
  return batch
