"""Input pipeline for SPADE/GauGAN: raw official layouts -> PIL-exact transforms -> grain batches.

numpy + PIL + grain only; no jax/flax import (pass jax.process_index()/process_count() to `make_dataset`).
The names below load on first use, so that `spade_jax.data.demo` (the demo's classes, which the model layer's
demo segmenter reads) imports where grain is not installed, e.g. the GPU check's image.
"""
import importlib

_EXPORTS = {"DataError": "errors", "skip_counter": "errors", "dataset_size": "pipeline", "make_dataset": "pipeline",
            "steps_per_epoch": "pipeline", "build_source": "sources", "TransformOptions": "transforms"}
__all__ = list(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
