"""What the tests and the benchmarks share: the PyTorch oracle and the helpers that compare against it.

- `spade_jax.testing.torch_reference`: the official networks (generator, discriminator, encoder, VGG19) and losses
  written with torch.nn, with the official state_dict layout; the parity tests' oracle and the PyTorch side of
  bench/torch_compare.py, bench/components.py, bench/blocks.py and bench/generator_parity.py.
- `spade_jax.testing.parity`: torch module -> our variables, NCHW <-> NHWC, tolerance comparisons.

Needs the test extra (`pip install -e .[test]`: torch). The library itself never imports this package (the layer
check in tests/test_layering.py keeps it on top), so torch stays out of the runtime dependencies.
"""
