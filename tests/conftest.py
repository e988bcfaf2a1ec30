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


# The slowest modules first, so that the two workers end together: xdist's --dist loadscope hands out whole modules
# in collection order (the Makefile turns off its default reordering by test count, which put these few-test modules
# last). The order is an earlier run's (925 s, the speed-options module at 262 s before its cut); the seconds are
# from `make test PYTEST_ARGS="-v --durations=0"` of the final one on the 2-core host (818 s, workers ending at 805 /
# 804 s). Replaying that run's test durations through xdist's scheduler: this order 800 / 792 s, the default 749 /
# 841 s, sorted by these seconds 798 / 791 s.
SLOWEST_FIRST = (
    "tests/training/test_train_e2e.py",         # 261 s
    "tests/training/test_speed_options.py",     # 150 s
    "tests/multihost/test_multihost_e2e.py",    # 171 s
    "tests/models/test_parity.py",              # 223 s
    "tests/evaluation/test_eval_e2e.py",        # 186 s
    "tests/aot/test_aot.py",                    # 118 s
    "tests/training/test_sharded_step.py",      # 104 s
    "tests/inference/test_convert.py",          # 64 s
    "tests/training/test_iteration_parity.py",  # 59 s
    "tests/inference/test_synthesis.py",        # 52 s
)


def pytest_collection_modifyitems(config, items):
  rank = {module: i for i, module in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
