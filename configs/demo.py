"""Self-contained demo: generated "landscapes" (sky, cloud, mountain, water, sand, grass, tree; day / sunset /
night styles) written once to $SPADE_DEMO_DATA (default data/demo), read through the same Grain file pipeline as
real data.

python train.py --config=configs/demo.py --workdir=runs/demo      (or: make demo)
"""
from spade_jax import config


def get_config():
  c = config.preset("demo")  # sizes, steps and evaluation: spade_jax/config.py (_demo)
  # Edit the demo here, e.g. c.train.num_steps = 640
  return c
