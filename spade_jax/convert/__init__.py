"""Official SPADE PyTorch checkpoints (latest_net_G/D/E.pth) -> an Orbax checkpoint that training, eval, the
synthesis command and `spade_jax.load` read.

  python -m spade_jax.convert --generator=checkpoints/coco_pretrained/latest_net_G.pth --preset=coco_stuff \
      --out=runs/coco_pretrained
  python -m spade_jax.convert --generator=G.pth --discriminator=D.pth --encoder=E.pth --opt=opt.txt --out=DIR

What the weights determine is read from them: ngf, the input channels (semantic_nc), VAE or not (fc is a Linear),
`most` upsampling (up_4 present), the SPADE param-free norm (BatchNorm buffers -> syncbatch, none -> instance), the
SPADE kernel size, spectral norm or not; num_D / n_layers_D / ndf of D; the encoder's input size. What they do not
(crop size, aspect ratio, normal vs more upsampling, how semantic_nc splits into classes + don't-care + edges) comes,
from lowest to highest priority, from the `--preset`, the official `opt.txt`, and flags. An explicit option (opt.txt
or flag) that contradicts the weights is an error; a preset default that does is replaced by what the weights say.

Output: `{out}/checkpoints/0/{state,config}` with state = {'step': 0, 'g', ['d'], ['e']} (variable collections
'params', 'batch_stats', 'spectral'; no optimiser states) and config = the full ml_collections config as a dict, plus
`{out}/conversion.json` (sources, inferred options, parameter counts).

Modules: opt_txt (the official options file), shapes (what the weights say), options (preset < opt.txt < flags,
checked against the weights), writer (the conversion and the checkpoint), cli (the command line; __main__ runs it).
"""
from __future__ import annotations

from spade_jax.convert.cli import main
from spade_jax.convert.opt_txt import opt_to_overrides, read_opt_txt
from spade_jax.convert.options import load_preset, resolve_options
from spade_jax.convert.shapes import detect_network, infer_discriminator, infer_encoder, infer_generator
from spade_jax.convert.writer import Converted, convert
from spade_jax.weights.official import ConversionError

__all__ = ["convert", "main", "read_opt_txt", "infer_generator", "infer_discriminator", "infer_encoder",
           "detect_network", "ConversionError", "Converted", "opt_to_overrides", "resolve_options", "load_preset"]
