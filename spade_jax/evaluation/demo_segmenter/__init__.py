"""A small segmenter for the procedural demo "landscapes" data set (spade_jax.data.demo), trained on real images.

No pretrained segmentation network exists for the demo data set, so its segmentation score (mIoU, pixel accuracy
of synthesised images against the label maps they were synthesised from) uses this network instead. Protocol:

* Training data: only the REAL training split (``{root}/train/{images,labels}``), read through the data
  pipeline's decoding (`spade_jax.data.decode.load_sample`) in evaluation mode, i.e. at the generated resolution
  (``crop_size``; 64x64 for ``configs/demo.py``), labels as given (7 classes: sky, cloud, mountain, water, sand,
  grass, tree; no ignore label). Augmentation: random horizontal flips. Validation images are never seen.
* Network (`SegNet`, `ARCH_VERSION`): a compact U-Net in Flax (NHWC, ~173 k parameters). Input: uint8 RGB
  scaled to [-1, 1] plus a row-coordinate channel, folded 2x2 space-to-depth to half resolution; encoder of 3x3
  conv + GroupNorm + ReLU blocks, 32 channels at 1/2, 48 at 1/4, 64 at 1/8 (strided-conv downsampling, one
  dilated conv) with a global-context vector (image mean of the 1/8 features: the day / sunset / night style);
  decoder: bilinear x2 upsampling with concatenated skips and 3x3 convs (32, 24 channels), then per
  half-resolution pixel a 1x1 conv to 2x2x7 logits, unfolded depth-to-space to 7-class logits at the input
  resolution.
* Training: from scratch, softmax cross-entropy, optax Adam (lr 3e-3, cosine decay), batch 8, `DEFAULT_STEPS`
  (800) steps, i.e. 12.5 epochs of the 512 default training images, about 40-50 s on a 2-core CPU; deterministic
  given the seed. (Real-val scores reached on the default demo set: ~0.97 pixel accuracy, ~0.89 mIoU.)
* Evaluation: argmax of the logits at the generated resolution; one dataset-level confusion matrix
  (`spade_jax.evaluation.metrics`) gives mIoU and pixel accuracy. `real_ceiling` is the same score on the REAL
  validation images: the ceiling a synthesis could reach if it were indistinguishable from real photos to this
  segmenter (scores of synthesised images are comparable to it, not to scores of other segmenters/data sets).

The trained weights are cached (`load_or_train`) as a flax msgpack file plus JSON metadata keyed by a fingerprint
of the data set (root, sizes, file names/sizes, generator parameters), the training seed and steps and the
architecture version, so evaluating twice does not retrain; a cache that is corrupt or belongs to another data set
is ignored with a warning and replaced.

    seg, info = load_or_train(config.data, log=print)
    pred = seg.segment(images_uint8_nhwc)            # int32 (N, H, W) class ids
    ceiling = real_ceiling(seg, config.data)          # {'miou', 'pixel_accuracy', ...} on real val images

Where its parts are: `spade_jax.models.segnet` (SegNet, its init), `data` (the checks, the decoded split, the cache
fingerprint), `segmenter` (DemoSegmenter: segment, save, load), `training` (train_demo_segmenter, load_or_train,
real_ceiling, PROTOCOL).
"""
from spade_jax.evaluation.demo_segmenter.data import check_demo_data, data_fingerprint, load_split
from spade_jax.evaluation.demo_segmenter.segmenter import DemoSegmenter
from spade_jax.evaluation.demo_segmenter.training import (
                                                          DEFAULT_BATCH_SIZE,
                                                          DEFAULT_STEPS,
                                                          PROTOCOL,
                                                          default_cache_path,
                                                          load_or_train,
                                                          real_ceiling,
                                                          train_demo_segmenter,
)
from spade_jax.models.segnet import ARCH_VERSION, CLASS_NAMES, NUM_CLASSES, SegNet, init_variables

__all__ = ["SegNet", "DemoSegmenter", "train_demo_segmenter", "load_or_train", "real_ceiling", "load_split",
           "check_demo_data", "data_fingerprint", "default_cache_path", "PROTOCOL", "ARCH_VERSION",
           "DEFAULT_STEPS", "DEFAULT_BATCH_SIZE", "NUM_CLASSES", "CLASS_NAMES", "init_variables"]
