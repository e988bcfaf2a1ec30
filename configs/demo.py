"""Self-contained demo: generated "landscapes" (sky, cloud, mountain, water, sand, grass, tree; day / sunset /
night styles) written once to data/demo, read through the same Grain file pipeline as real data.

python train.py --config=configs/demo.py --workdir=runs/demo      (or: make demo)
"""
import os

from configs import default

DEMO_DIR = os.environ.get("SPADE_DEMO_DATA", "data/demo")


def get_config():
  c = default.get_config()
  c.data.dataset = "custom"
  c.data.root = DEMO_DIR
  c.data.demo_generate = True   # write the data set on first use (spade_jax.data.demo)
  c.data.demo_num_train = 512
  c.data.demo_num_val = 32
  c.data.label_nc = 7
  c.data.contain_dontcare_label = False
  c.data.no_instance = True
  c.data.preprocess = "resize_and_crop"
  c.data.load_size = 64
  c.data.crop_size = 64
  c.model.ngf = 16
  c.model.ndf = 16
  c.model.use_vae = True        # style-guided and multimodal synthesis
  c.model.encoder_input_size = 128
  c.loss.lambda_vgg = 0.0       # no pretrained VGG19 offline: the perceptual loss is disabled explicitly
  c.train.batch_size = 8
  c.train.num_steps = 320       # ~6 min on a 2-core CPU; samples follow the label maps by then
  c.train.log_every = 50
  c.train.sample_every = 160
  c.train.checkpoint_every = 160
  c.train.progress_every_secs = 15.0
  # At the end: the segmentation score of the synthesis (a small segmenter trained on the real demo images, ~1 min
  # on first use) next to its real-image ceiling. FID needs the pytorch-fid Inception weights (downloaded once):
  # --config.eval.fid=True.
  c.eval.every_steps = -1        # at the end only
  c.eval.fid = False
  return c
