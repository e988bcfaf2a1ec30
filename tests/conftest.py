"""Test setup: 8 simulated CPU devices (sharding tests), parsed absl flags, and paths to shared test data."""
import os
import pathlib
import sys
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 8)  # must run before any JAX computation
# Compiling the GAN step dominates test time on 2 cores; XLA's heavy optimisations only cost time here (2.5x).
jax.config.update("jax_disable_most_optimizations", True)
# One persistent compilation cache for the session, shared with the train.py subprocesses of end-to-end tests.
COMPILE_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="spade_jax_xla_cache_"))
jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

from absl import flags

if not flags.FLAGS.is_parsed():
  flags.FLAGS(sys.argv[:1])  # grain / absl-using libraries read flags; pytest's own argv is not theirs

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO_SAMPLE = SHARED / "data" / "coco_stuff_sample"


@pytest.fixture(scope="session")
def coco_sample_dir():
  if not COCO_SAMPLE.is_dir():
    pytest.skip(f"real COCO-Stuff samples not found at {COCO_SAMPLE} (they live in ../shared/data beside the repo)")
  return COCO_SAMPLE
