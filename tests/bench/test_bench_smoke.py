"""Each benchmark script in bench/ runs once on a tiny config (ngf 4, 32x32, batch 2, one timed call) and must exit 0
and print its table: a bench that stops working against the library shows up here, not at the next measurement.

Smoke runs, not measurements: subprocesses with XLA's optimisations off (JAX_DISABLE_MOST_OPTIMIZATIONS), two at a
time, sharing the session's persistent compilation cache; compiling is most of their time. bench/device_check.sh
needs a GPU and is only parsed here; the two scripts it runs, generator_parity.py and speed.py, run here on the CPU.
profile_step.py needs xprof (not a test dependency) and is skipped where it is not installed. Two runs cost more than
the suite can spend (about 15 s each on two cores) and wait for SPADE_JAX_BENCH_SMOKE_FULL=1: torch_compare.py's
per-component table (bench/components.py; without it torch_compare.py runs with --no_components) and
eval_networks.py (the FID Inception).

The whole file costs about 75 s on two cores, which the CI suite's 15-minute budget does not have left: it runs with
SPADE_JAX_BENCH_SMOKE=1 (`make test-bench`), and skips otherwise.
"""
import concurrent.futures
import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.environ.get("SPADE_JAX_BENCH_SMOKE"),
                                 reason="the benchmark smoke runs (75 s): SPADE_JAX_BENCH_SMOKE=1 (make test-bench)")]

FULL = bool(os.environ.get("SPADE_JAX_BENCH_SMOKE_FULL"))

TINY_CONFIG = '''"""The benchmark smoke test's config: the custom preset, shrunk."""
from spade_jax import config as spade_config


def get_config():
  c = spade_config.preset("custom")
  c.data.label_nc = 5
  c.data.load_size = c.data.crop_size = 32
  c.model.ngf = c.model.ndf = 4
  c.model.num_D, c.model.n_layers_D = 1, 2
  c.loss.lambda_vgg = 0.0
  return c
'''

NUMBER = r"[0-9.]+(?:e[-+]?[0-9]+)?"
COMPONENTS = ("G fwd", "G fwd\\+bwd", "D fwd\\+bwd", "VGG fwd\\+bwd")


def cases(config: str) -> dict:
  """name: (command line after the interpreter, modules it needs (None: only with SPADE_JAX_BENCH_SMOKE_FULL),
  patterns its output must have a line matching)."""
  ratio_row = lambda what: rf"^\| {what} \| {NUMBER} \| {NUMBER} \| {NUMBER}x \|$"
  return {
      "inference": (["bench/inference.py", f"--preset={config}", "--batch_sizes=2", "--repeats=1", "--warmup=1"], (),
                    [rf"^\| 2 \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$"]),
      "speed": (["bench/speed.py", f"--presets={config}", "--batch=2", "--infer_batch=2", "--steps=1", "--devices=1"],
                (), [rf"^\| tiny \| 32x32 \| {what} \| 2 \| {NUMBER} \|" for what in ("train", "infer")]),
      "torch_compare": (["bench/torch_compare.py", f"--preset={config}", "--batch=2", "--steps=1", "--infer_batch=2",
                         "--threads=1"] + ([] if FULL else ["--no_components"]), ("torch",),
                        [ratio_row(what) for what in ("train iteration", "inference, batch 2")
                         + (COMPONENTS if FULL else ())]),
      "generator_parity": (["bench/generator_parity.py", "--ngf=4", "--crop=32", "--label_nc=6", "--batch=2",
                            "--precisions=highest"], ("torch",),
                           [rf"^\| {mode} \| highest \| {NUMBER} \|" for mode in ("eval", "train")]),
      "blocks": (["bench/blocks.py", "--ngf=4", "--size=32", "--blocks=up_3", "--steps=1", "--threads=1"], ("torch",),
                 [rf"^\| up_3 \| 8->4 at 32x32 \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER}x \|$"]),
      "conv_sweep": (["bench/conv_sweep.py", f"--preset={config}", "--repeats=1", "--top=1"], (),
                     [r"^\| \(1, 32, 32, ", rf"^totals over the listed calls: forward {NUMBER} s"]),
      "eval_networks": (["bench/eval_networks.py", "--batch=1", "--iters=1", "--skip-drn", "--skip-upernet",
                         "--skip-deeplab"], () if FULL else None,
                        [rf"^FID Inception 299x299, batch 1: {NUMBER} images/s$"]),
      "init_compile": (["bench/init_compile.py", f"--preset={config}"], (),
                       [rf"^XLA defaults +compile \+ run +{NUMBER} s$",
                        rf"^init_compiler_options +compile \+ run +{NUMBER} s$", rf"^largest difference {NUMBER}$"]),
      "profile_step": (["bench/profile_step.py", f"--preset={config}", "--batch=2", "--top=3"], ("xprof",),
                       [r"^\| network \| pass \| s \|$", r"^\| SPADEGenerator \| (forward|backward) \|"]),
  }


# One line of runs per core. torch_compare.py and profile_step.py compile the same train state and step as speed.py:
# started after it has (about 30 s in), they read them back from the cache; inference.py compiles the generator's
# init that speed.py and torch_compare.py need later. (Out of this order they compile for themselves: slower, not
# wrong.)
CHAINS = [("speed", "conv_sweep", "profile_step", "eval_networks", "init_compile"),
          ("inference", "generator_parity", "blocks", "torch_compare")]
TIMEOUT_S = 600


def _why_not(needs) -> str | None:
  """Why a case does not run here, or None."""
  if needs is None:
    return "runs with SPADE_JAX_BENCH_SMOKE_FULL=1"
  missing = [m for m in needs if importlib.util.find_spec(m) is None]
  return f"needs {', '.join(missing)}" if missing else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """name: (exit status, stdout + stderr, seconds), for every case that runs here."""
  config = tmp_path_factory.mktemp("bench_smoke") / "tiny.py"
  config.write_text(TINY_CONFIG)
  table = cases(str(config))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("xla_cache")))
  results = {}

  def run_chain(names):
    for name in names:
      argv, needs, _ = table[name]
      if _why_not(needs):
        continue
      t = time.perf_counter()
      try:
        r = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
        results[name] = (r.returncode, r.stdout + r.stderr, time.perf_counter() - t)
      except subprocess.TimeoutExpired as e:
        results[name] = (f"a timeout ({TIMEOUT_S} s)", f"{e.stdout or ''}{e.stderr or ''}", TIMEOUT_S)

  assert sorted(sum(CHAINS, ())) == sorted(table)
  t = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max_workers=len(CHAINS)) as pool:
    for future in [pool.submit(run_chain, chain) for chain in CHAINS]:
      future.result()
  print(f"\nbench smoke runs: {time.perf_counter() - t:.1f} s in all; "
        + ", ".join(f"{name} {s:.1f} s" for name, (_, _, s) in results.items()))
  return results


@pytest.mark.parametrize("name", sorted(cases("")))
def test_bench_script_runs_on_a_tiny_config(name, runs):
  _, needs, patterns = cases("")[name]
  if _why_not(needs):
    pytest.skip(f"bench/{name}.py {_why_not(needs)}")
  code, output, _ = runs[name]
  assert code == 0, f"bench/{name}.py exited with {code}:\n{output[-4000:]}"
  lines = output.splitlines()
  for pattern in patterns:
    assert any(re.search(pattern, line) for line in lines), f"no line matches {pattern!r}:\n{output[-4000:]}"


def test_generator_parity_differences_are_float32_round_off(runs):
  """generator_parity.py compares against PyTorch in float64: at 'highest' precision only round-off is left."""
  if "generator_parity" not in runs:
    pytest.skip("bench/generator_parity.py needs torch")
  rows = re.findall(rf"^\| (eval|train) \| highest \| ({NUMBER}) \|", runs["generator_parity"][1], re.M)
  assert len(rows) == 2 and all(float(diff) < 1e-4 for _, diff in rows), rows


def test_device_check_script_parses():
  """bench/device_check.sh needs a GPU (about 8 minutes): here bash's syntax check, and the scripts it runs exist
  (they run above)."""
  script = REPO / "bench" / "device_check.sh"
  r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  for name in re.findall(r"bench/(\w+\.py)", script.read_text()):
    assert (REPO / "bench" / name).is_file(), name
