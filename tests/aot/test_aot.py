"""Ahead-of-time compiles for a TPU slice (libtpu) and a GPU host (the CUDA plugin), on this CPU host.

A tiny train step and synthesis program compile for 4 TPU v5e chips and for 4 H100s; the program is the one a TPU
host builds (no formulation reads this host's default backend); the data-parallel programs need only all-reduces.
Needs `make setup-aot` (the suite's setup does it); without it the tests skip, and with SPADE_JAX_REQUIRE_AOT=1
(CI) they fail.
"""
import os
import subprocess
import sys

import jax
import pytest

from spade_jax import aot
from spade_jax.aot import gpu, slices
from tests.conftest import REPO
from tests.training.tiny import tiny_config


def _require(what: str, available: bool):
  if available:
    return
  msg = f"{what} is not installed (make setup-aot)"
  if os.environ.get("SPADE_JAX_REQUIRE_AOT") == "1":
    pytest.fail(f"{msg}; SPADE_JAX_REQUIRE_AOT=1 requires the ahead-of-time tests to run")
  pytest.skip(msg)


@pytest.fixture(scope="module")
def tpu_slice():
  aot.prepare_process()
  import importlib.util
  _require("libtpu", importlib.util.find_spec("libtpu") is not None)
  s = slices.get("v5e-4")
  return s, s.devices()


@pytest.fixture(scope="module")
def gpu_slice():
  aot.prepare_process()
  _require("the CUDA plugin", gpu.ensure_plugin_path())
  s = slices.get("h100-4")
  return s, s.devices()


def _config():
  c = tiny_config(use_vae=False, lambda_vgg=0.0, crop=32)
  c.model.num_D = 1  # compile time; the interleaved fake / real rows enter the first scale
  c.train.batch_size = 8  # 2 per chip
  return c


def test_collectives_are_counted_once_per_op_with_their_result_bytes():
  hlo = "\n".join([
      "  %ar = f32[128]{0} all-reduce(f32[128]{0} %x), replica_groups={}",
      "  %ars = (f32[4,4]{1,0}, bf16[8]{0}) all-reduce-start(f32[4,4]{1,0} %a, bf16[8]{0} %b)",
      "  %ard = (f32[4,4]{1,0}, bf16[8]{0}) all-reduce-done((f32[4,4]{1,0}, bf16[8]{0}) %ars)",
      "  %ags = (f32[2,8]{1,0}, f32[8,8]{1,0}) all-gather-start(f32[2,8]{1,0} %y), dimensions={0}",
      "  %cp = (f32[16]{0}, f32[16]{0}, u32[], u32[]) collective-permute-start(f32[16]{0} %z)",
      '  %f = f32[3]{0} add(f32[3]{0} %p, f32[3]{0} %q), metadata={op_name="all-gather("}',
  ])
  assert aot.collectives(hlo) == {"all-reduce": (2, 128 * 4 + 16 * 4 + 8 * 2), "all-gather": (1, 8 * 8 * 4),
                                  "collective-permute": (1, 16 * 4)}


def test_slices_name_the_cloud_tpu_and_gpu_shapes():
  assert slices.get("v5e-256").chips == 256 and slices.get("v5p-128").chips == 64
  assert slices.get("v4-8").chips == 4 and slices.get("h100-8").chips == 8
  assert slices.get("v5e-8").host_bounds == (2, 4, 1)
  with pytest.raises(ValueError, match="unknown --topology='v9-8'; one of: v4-8"):
    slices.get("v9-8")


def test_tpu_train_step_compiles_is_host_independent_and_only_all_reduces(tpu_slice, monkeypatch):
  s, devices = tpu_slice
  config = _config()
  lowered = aot.lower(config, devices, "train")
  with monkeypatch.context() as m:  # the program for the TPU is the same whatever this host's default backend says
    m.setattr(jax, "default_backend", lambda: "tpu")
    assert aot.lower(config, devices, "train").as_text() == lowered.as_text()
  report = aot.compile_report(config, s, "train", devices, lowered)
  assert report.fits and report.chips == 4 and report.per_chip_batch == 2
  assert report.flops > 0 and report.bytes_accessed > 0 and report.flops_source == "compiler"
  # data parallel with replicated parameters: gradients and synchronised batch statistics, nothing else
  assert set(report.collectives) == {"all-reduce"}, report.collectives
  roof = report.roofline()
  assert roof["bound"] in ("compute", "memory") and roof["images_s"] > 0


def test_gpu_train_step_compiles_with_only_all_reduces(gpu_slice):
  s, devices = gpu_slice
  report = aot.compile_report(_config(), s, "train", devices)
  assert report.fits and report.hbm == 80 * slices.GIB
  assert set(report.collectives) == {"all-reduce"}, report.collectives
  assert report.flops > 0 and report.flops_source == "unoptimised HLO / chips"


@pytest.mark.parametrize("which", ["tpu", "gpu"])
def test_synthesis_compiles_without_collectives(which, request):
  s, devices = request.getfixturevalue(f"{which}_slice")
  report = aot.compile_report(_config(), s, "synthesize", devices)
  assert report.fits and report.collectives == {}


def test_cli_says_in_one_line_when_nothing_fits(tpu_slice):
  """The demo generator (ngf 4, 32 px) at 2 per chip against 5 MiB of HBM: exit status 1 and one `error:` line,
  after compiling at 2 and at 1 per chip (the search below is tested on its own)."""
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  args = [sys.executable, "-m", "spade_jax.aot", "--topology=v5e-1", "--config=configs/demo.py", "--what=synthesize",
          "--config.model.ngf=4", "--config.model.use_vae=False", "--config.data.crop_size=32",
          "--config.data.load_size=32", "--config.train.batch_size=2", "--hbm_gib=0.005"]
  out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert errors[0].startswith("error: synthesize needs ") and "MiB per chip on v5e-1, more than its 5.1 MiB of HBM; " \
      "not even one image per chip fits" in errors[0], errors[0]
  assert "synthesize on v5e-1 (1 chips), global batch 2 (2 per chip)" in out.stdout
  assert "compiling synthesize at 1 per chip" in out.stdout


def test_search_brackets_the_largest_fitting_batch_within_a_sixteenth():
  """Memory a + c * batch against a 1 GiB chip: the line's prediction, then bisection, few compiles."""
  chip = slices.get("v5e-1").with_hbm(slices.GIB)
  compiled = []

  def fake_compile(config, slice_, what, devices):
    b = config.train.batch_size
    compiled.append(b)
    return aot.Report(what, slice_.name, 1, b, "float32", 0.0, 3 << 20, 0, 0, (b * 37 + 11) << 20, 1 << 20,
                      slice_.chip.hbm_bytes, None, None, "none", {}, 1.0, 1.0)

  config = _config()
  config.train.batch_size = 64
  first = fake_compile(config, chip, "train", [None])
  best, too_big, report = aot.largest_fitting_batch(config, chip, "train", first, [None], compile_fn=fake_compile)
  fits = lambda b: (b * 37 + 11 + 3 + 1) << 20 <= slices.GIB
  assert fits(best) and not fits(too_big) and too_big - best <= max(1, best // 16)
  assert best == 27 and report.global_batch == 27 and len(compiled) <= 5, compiled
  config.train.batch_size = 8
  best, too_big, _ = aot.largest_fitting_batch(config, chip, "train", fake_compile(config, chip, "train", [None]),
                                               [None], compile_fn=fake_compile)
  assert (best, too_big) == (27, 28)


def test_batch_not_divisible_by_the_chips_is_named(tpu_slice):
  s, devices = tpu_slice
  config = _config()
  config.train.batch_size = 6
  with pytest.raises(ValueError, match="batch_size=6 must be a positive multiple of the 4 chips of v5e-4"):
    aot.compile_report(config, s, "train", devices)
