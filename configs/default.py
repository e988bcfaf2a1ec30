"""Shared defaults: every number is the official SPADE default unless a comment says otherwise.

Dataset configs (coco_stuff.py, ade20k.py, cityscapes.py, custom.py, demo.py) start from `get_config()` here and
override what their data set needs. Override anything from the command line: `--config.train.batch_size=8`.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = d = ml_collections.ConfigDict()
  d.dataset = "custom"          # coco_stuff | ade20k | cityscapes | custom | tfds
  d.root = ""                   # dataroot of the official layouts
  d.image_dir = ""              # custom layout
  d.label_dir = ""
  d.instance_dir = ""           # '' = none
  d.tfds_name = ""              # a tfds data set prepared as ArrayRecord (read without TensorFlow)
  d.tfds_data_dir = ""
  d.label_nc = 13               # classes, not counting the don't-care slot
  d.contain_dontcare_label = False  # label 255 -> an extra "unknown" channel
  d.no_instance = True          # False: append the instance-edge channel
  d.preprocess = "resize_and_crop"
  d.load_size = 286
  d.crop_size = 256
  d.aspect_ratio = 1.0
  d.no_flip = False
  d.on_bad_sample = "error"     # error | skip (logged, counted)
  d.workers = 0                 # grain worker processes
  d.prefetch = 4
  d.max_dataset_size = 0        # 0 = all

  c.model = m = ml_collections.ConfigDict()
  m.ngf = 64
  m.num_upsampling_layers = "normal"  # normal | more | most
  m.use_vae = False
  m.param_free_norm = "syncbatch"     # syncbatch | batch | instance  (official norm_G 'spectralspadesyncbatch3x3')
  m.spade_kernel = 3
  m.spectral_G = True
  m.ndf = 64
  m.num_D = 2
  m.n_layers_D = 4
  m.spectral_D = True                 # official norm_D 'spectralinstance'
  m.spectral_E = True                 # official norm_E 'spectralinstance'
  m.encoder_input_size = 256          # official: the encoder always resizes to 256x256
  # Speed and memory (none changes the variables, so official checkpoints convert either way):
  m.dtype = "float32"                 # compute dtype: float32 | bfloat16 (params, optimiser, norm statistics and
                                      # spectral-norm power iterations stay float32)
  m.remat_G = False                   # recompute generator ResBlk activations in the backward pass (less memory)
  m.remat_D = False                   # the same per discriminator scale
  m.spade_label_conv = "dense"        # dense | gather: SPADE's label conv as row gathers over one-hot ids

  c.loss = l = ml_collections.ConfigDict()
  l.lambda_feat = 10.0      # 0 disables feature matching (official --no_ganFeat_loss)
  l.lambda_vgg = 10.0       # 0 disables the VGG loss (official --no_vgg_loss); required when no VGG weights exist
  l.lambda_kld = 0.05
  l.vgg_input_norm = "official"  # official: [-1, 1] as is | imagenet: mean/std normalised (imaginaire)
  l.vgg_weights = ""        # path to vgg19-dcbb9e9d.pth; '' = the download cache

  c.optim = o = ml_collections.ConfigDict()
  o.lr = 2e-4               # base lr; TTUR gives G lr/2 and D lr*2
  o.no_TTUR = False         # True: G = D = lr, betas (0.5, 0.999)
  o.beta1 = 0.0             # TTUR betas (the maintainer confirmed 0.9, not the paper's 0.999)
  o.beta2 = 0.9

  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 32         # global batch (paper: 32 on 8 GPUs)
  t.niter = 50              # epochs at constant lr (official default)
  t.niter_decay = 0         # epochs of linear decay to 0 after niter
  t.num_steps = 0           # > 0 overrides the epoch count (e.g. a quick run)
  t.log_every = 50          # steps between scalar logs (also the NaN check)
  t.sample_every = 1000     # steps between sample grids (label | synthesis | real)
  t.checkpoint_every = 2000
  t.keep_checkpoints = 3
  t.progress_every_secs = 30.0
  t.init_from = ""          # a workdir or converted official checkpoint to start G (and D, E) from
  t.use_shard_map = False   # per-device step with explicit pmean instead of jit over global arrays
  t.grad_accum = 1          # micro-batches per update: the global batch is split k ways (memory / k per step)
  t.ema_decay = 0.0         # > 0: keep an EMA of G (+ E) weights for eval and synthesis (imaginaire: 0.9999)
  t.ema_start = 1000        # steps before which the EMA copies the weights (imaginaire: 1000)

  c.eval = e = ml_collections.ConfigDict()  # periodic evaluation during training (eval.py has the same options)
  e.every_steps = 0         # > 0: FID and segmentation scores every N steps and at the end, on the training mesh;
                            # -1: at the end only; 0: never (eval.py evaluates any checkpoint)
  e.num_images = 0          # validation images per evaluation (0 = the whole split)
  e.batch_size = 8          # rounded up to a multiple of the device count
  e.fid = True
  e.inception_weights = ""  # '' = the download cache; 'random' only for smoke tests
  e.segmenter = "auto"      # auto (the data set's network) | none
  e.segmenter_weights = ""  # DRN .pth (Cityscapes, required); 'enc.pth,dec.pth' (ADE20K); DeepLab .pth (COCO)
  e.demo_segmenter_steps = 0  # 0 = default

  c.parallel = p = ml_collections.ConfigDict()
  p.num_data = -1           # devices on the data axis (-1 = all devices of all hosts)
  p.shard_params = False    # FSDP-style: store large parameters and optimiser moments split over the devices
  return c
