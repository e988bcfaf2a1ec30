"""Input pipeline for SPADE/GauGAN: raw official layouts -> PIL-exact transforms -> grain batches.

numpy + PIL + grain only; no jax/flax import (pass jax.process_index()/process_count() to `make_dataset`).
"""

from spade_jax.data.errors import DataError, skip_counter
from spade_jax.data.pipeline import dataset_size, make_dataset, steps_per_epoch
from spade_jax.data.sources import build_source
from spade_jax.data.transforms import TransformOptions

__all__ = ["DataError", "skip_counter", "dataset_size", "make_dataset", "steps_per_epoch", "build_source",
           "TransformOptions"]
