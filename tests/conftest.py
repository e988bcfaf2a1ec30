"""Test setup: 8 simulated CPU devices (sharding tests), parsed absl flags, and paths to shared test data."""
import os
import pathlib
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)  # must run before any JAX computation

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS(sys.argv[:1])  # grain / absl-using libraries read flags; pytest's own argv is not theirs

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO_SAMPLE = SHARED / "data" / "coco_stuff_sample"


@pytest.fixture(scope="session")
def coco_sample_dir():
  if not COCO_SAMPLE.is_dir():
    pytest.skip(f"real COCO-Stuff samples not found at {COCO_SAMPLE} (they live in ../shared/data beside the repo)")
  return COCO_SAMPLE
