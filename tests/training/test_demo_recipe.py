"""The demo recipe still learns every style (#27): `make demo` as shipped (its 400 steps, without the segmentation
score) for two seeds side by side, each on its own generated data, must judge at least 90% of the validation
syntheses in their own photo's style and draw each style with at least 15% of the random codes, the issue's bar.
Measured (README "The demo", 2-core AMD EPYC): accuracy 1.000 on seeds 0-4, the smallest share 0.17-0.25 on seeds
1-4 but 0.13 (day) on seed 0, which this test fails (#27 is open for it); seeds 3 and 4 passed it. Without the
aggregate KL seed 1 drew day 9% of the time, and with the #25 recipe its accuracy was 0.594.

An estimated 12-15 minutes on two cores (two training runs side by side; 1398 s measured with two more runs beside
them), which the CI suite's 15-minute budget does not have: it runs with SPADE_JAX_DEMO_RECIPE=1
(`make test-demo`), and skips otherwise.
SPADE_JAX_DEMO_SEEDS=3,4 picks other seeds (default 0,1).
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
                                 reason="two demo runs (12-15 min): SPADE_JAX_DEMO_RECIPE=1 (make test-demo)")]

SEEDS = tuple(int(s) for s in os.environ.get("SPADE_JAX_DEMO_SEEDS", "0,1").split(","))
MIN_ACCURACY = 0.9
MIN_SHARE = 0.15


def _run(tmp_path, seed):
  work = tmp_path / f"run{seed}"
  # The recipe as shipped; the segmentation score (and its segmenter) is not needed for the style.
  overrides = {"seed": seed, "data.root": tmp_path / f"data{seed}", "eval.segmenter": "none",
               "train.checkpoint_every": 1000, "train.sample_every": 1000}
  cmd = [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'demo.py'}", f"--workdir={work}",
         *[f"--config.{k}={v}" for k, v in overrides.items()]]
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_DISABLE_MOST_OPTIMIZATIONS", "XLA_FLAGS")}
  out = subprocess.run(cmd, env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=3000)
  assert out.returncode == 0, out.stderr[-3000:]
  last = max((work / "eval").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
  return json.loads((last / "report.json").read_text())["style"]


def test_the_demo_recipe_learns_and_draws_every_style_on_two_seeds(tmp_path):
  with ThreadPoolExecutor(len(SEEDS)) as pool:
    styles = dict(zip(SEEDS, pool.map(lambda s: _run(tmp_path, s), SEEDS)))
  history = {s: [(h["step"], round(h["accuracy"], 3), h.get("random_code_shares")) for h in st["over_training"]]
             for s, st in styles.items()}
  print(f"style over training (step, accuracy, random-code shares): {history}")
  for seed, style in styles.items():
    assert style["accuracy"] >= MIN_ACCURACY, (
        f"seed {seed}: style accuracy {style['accuracy']:.3f} at the end (< {MIN_ACCURACY}); over training "
        f"{history}; confusion {style['confusion']}")
    short = {k: v for k, v in style["random_code_shares"].items() if v < MIN_SHARE}
    assert not short, (f"seed {seed}: random codes draw {short} (< {MIN_SHARE} each); over training {history}")
