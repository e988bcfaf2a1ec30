"""Cityscapes (35 label ids + instance edges): semantic_nc 36, 256x512 ('fixed' resize), 'more' upsampling.

python train.py --config=configs/cityscapes.py --workdir=runs/cityscapes --config.data.root=/data/cityscapes
"""
from spade_jax import config


def get_config():
  c = config.preset("cityscapes")  # data set facts, batch size and paper epochs: spade_jax/config.py (DATASETS)
  # Edit your run here, e.g. c.data.root = "/data/cityscapes"
  return c
