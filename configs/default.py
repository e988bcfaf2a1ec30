"""The bare schema (spade_jax.config.defaults): every key, its default and what it means is documented there.

Dataset configs (coco_stuff.py, ade20k.py, cityscapes.py, custom.py, demo.py) start from the library's presets.
Override anything from the command line: `--config.train.batch_size=8`.
"""
from spade_jax.config import defaults


def get_config():
  return defaults()
