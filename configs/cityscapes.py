"""Cityscapes (35 label ids + instance edges): semantic_nc 36, 256x512 ('fixed' resize), 'more' upsampling.

python train.py --config=configs/cityscapes.py --workdir=runs/cityscapes --config.data.root=/data/cityscapes
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "cityscapes"
  c.data.label_nc = 35
  c.data.contain_dontcare_label = False
  c.data.no_instance = False
  c.data.preprocess = "fixed"
  c.data.load_size = 512
  c.data.crop_size = 512
  c.data.aspect_ratio = 2.0
  c.model.num_upsampling_layers = "more"
  c.train.batch_size = 16   # official Cityscapes default (paper: 32)
  c.train.niter = 100       # paper: 200 epochs, linear decay over the last 100
  c.train.niter_decay = 100
  return c
