"""SPADE / GauGAN in JAX/Flax. `spade_jax.load(checkpoint)` gives a Synthesizer (label maps -> images).

Imports stay light: `load` and `Synthesizer` import JAX and the model code on first use.
"""

__all__ = ["load", "Synthesizer"]


def __getattr__(name):
  if name in ("load", "Synthesizer"):
    from spade_jax import inference
    return getattr(inference, name)
  raise AttributeError(f"module 'spade_jax' has no attribute {name!r}")
