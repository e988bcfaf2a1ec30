"""ADE20K (ADEChallengeData2016: 150 classes + "other" as channel 0, no instances): semantic_nc 151, 256x256.

python train.py --config=configs/ade20k.py --workdir=runs/ade20k --config.data.root=/data/ADEChallengeData2016
"""
from spade_jax import config


def get_config():
  c = config.preset("ade20k")  # data set facts and paper epochs: spade_jax/config.py (DATASETS)
  # Edit your run here, e.g. c.data.root = "/data/ADEChallengeData2016"
  return c
