"""Your own paired folders: images + single-channel index-PNG labels (+ optional instance maps).

python train.py --config=configs/custom.py --workdir=runs/mine \
  --config.data.image_dir=/data/mine/images --config.data.label_dir=/data/mine/labels --config.data.label_nc=20
Add --config.data.instance_dir=... --config.data.no_instance=False for instance edges, and
--config.data.contain_dontcare_label=True if 255 marks unlabeled pixels.
"""
from spade_jax import config


def get_config():
  c = config.preset("custom")  # no_instance=True: unlike the official default, which crashes without an instance dir
  # Edit your data set here, e.g. c.data.image_dir, c.data.label_dir, c.data.label_nc
  return c
