"""ADE20K (ADEChallengeData2016: 150 classes + "other" as channel 0, no instances): semantic_nc 151, 256x256.

python train.py --config=configs/ade20k.py --workdir=runs/ade20k --config.data.root=/data/ADEChallengeData2016
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "ade20k"
  c.data.label_nc = 150
  c.data.contain_dontcare_label = True
  c.data.no_instance = True
  c.train.niter = 100       # paper: 200 epochs, linear decay over the last 100
  c.train.niter_decay = 100
  return c
