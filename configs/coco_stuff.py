"""COCO-Stuff (182 classes + unlabeled, instance edges): semantic_nc 184, 256x256, 'normal' upsampling.

python train.py --config=configs/coco_stuff.py --workdir=runs/coco --config.data.root=/data/cocostuff
"""
from spade_jax import config


def get_config():
  c = config.preset("coco_stuff")  # data set facts and paper epochs: spade_jax/config.py (DATASETS)
  # Edit your run here, e.g. c.data.root = "/data/cocostuff"
  return c
