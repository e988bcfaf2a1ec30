"""COCO-Stuff (182 classes + unlabeled, instance edges): semantic_nc 184, 256x256, 'normal' upsampling.

python train.py --config=configs/coco_stuff.py --workdir=runs/coco --config.data.root=/data/cocostuff
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "coco_stuff"
  c.data.label_nc = 182
  c.data.contain_dontcare_label = True
  c.data.no_instance = False
  c.train.niter = 100       # paper: 100 epochs (recalled; see docs/spade_reference.md §8)
  c.train.niter_decay = 0
  return c
