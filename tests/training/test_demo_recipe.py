"""The demo recipe still learns every style (#27): a shortened `make demo` (240 of its 400 steps, where the styles are
learned and before its perceptual loss and KL decay begin) for seeds 0 and 1, each on its own generated data, must
judge at least 90% of the validation syntheses in their own photo's style (measured at this step: 1.000 on seeds 0
and 1, 0.969 on seed 2; the last recipe had 0.875 on seed 1, the #25 recipe 0.594).

About 9.5 minutes on two cores (566 s measured, two training runs side by side), which the CI suite's 15-minute
budget does not have: it runs with SPADE_JAX_DEMO_RECIPE=1 (`make test-demo`), and skips otherwise.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.environ.get("SPADE_JAX_DEMO_RECIPE"),
                                 reason="two shortened demo runs (9.5 min): SPADE_JAX_DEMO_RECIPE=1 (make test-demo)")]

SEEDS = (0, 1)
STEPS = 240
MIN_ACCURACY = 0.9


def _run(tmp_path, seed):
  work = tmp_path / f"run{seed}"
  # The recipe as shipped up to step 240; the segmentation score (and its segmenter) is not needed for the style.
  overrides = {"seed": seed, "data.root": tmp_path / f"data{seed}", "train.num_steps": STEPS,
               "eval.segmenter": "none", "train.checkpoint_every": 1000, "train.sample_every": 1000}
  cmd = [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'demo.py'}", f"--workdir={work}",
         *[f"--config.{k}={v}" for k, v in overrides.items()]]
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_DISABLE_MOST_OPTIMIZATIONS", "XLA_FLAGS")}
  out = subprocess.run(cmd, env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=1800)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads((work / "eval" / f"step_{STEPS}" / "report.json").read_text())["style"]


def test_the_demo_recipe_learns_every_style_on_two_seeds(tmp_path):
  with ThreadPoolExecutor(len(SEEDS)) as pool:
    styles = dict(zip(SEEDS, pool.map(lambda s: _run(tmp_path, s), SEEDS)))
  history = {s: [(h["step"], round(h["accuracy"], 3)) for h in st["over_training"]] for s, st in styles.items()}
  for seed, style in styles.items():
    assert style["accuracy"] >= MIN_ACCURACY, (
        f"seed {seed}: style accuracy {style['accuracy']:.3f} at step {STEPS} (< {MIN_ACCURACY}); over training "
        f"{history}; confusion {style['confusion']}")
