"""Compile a config for a TPU slice or GPU host ahead of time, on this host, and say whether and how it fits.

  python -m spade_jax.aot --topology=v5e-8 --config=configs/coco_stuff.py [--config.x.y=v ...]
      [--what=train,synthesize] [--fill] [--hbm_gib=G] [--json=FILE]

Exit status 0: every program fits the chip's HBM; 1: one does not (its `error:` line names a per-chip batch that
fits and the next one tried that does not, found by compiling), or a bad flag or value (one `error:` line). Needs
libtpu or the CUDA plugin (`make setup-aot`).
"""
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from spade_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "A Cloud TPU slice (v5e-8, v5p-128, ...) or GPU host (h100-8).")
_WHAT = flags.DEFINE_list("what", ["train", "synthesize"], "Programs: train, synthesize.")
_FILL = flags.DEFINE_bool("fill", False, "Also find the largest per-chip batch that fits, by compiling.")
_JSON = flags.DEFINE_string("json", None, "Also write the reports to this JSON file.")
_HBM = flags.DEFINE_float("hbm_gib", None, "Plan for this much HBM per chip instead of the chip's (e.g. to keep "
                          "headroom for other programs).")
_LIBS = flags.DEFINE_string("libs", None, "Folder holding libtpu / the CUDA plugin (default <venv>/aot-libs).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from spade_jax import aot
  aot.prepare_process(_LIBS.value)
  from spade_jax import cli
  cli.quiet_libraries()
  with cli.user_errors():
    from spade_jax.aot import slices
    what = [w for w in _WHAT.value if w]
    if not what or set(what) - set(aot.WHAT):
      raise UserError(f"--what must name some of {', '.join(aot.WHAT)}, got {','.join(_WHAT.value)!r}")
    slice_ = slices.get(_TOPOLOGY.value)
    if _HBM.value is not None:
      if not 0 < _HBM.value:
        raise UserError(f"--hbm_gib must be positive, got {_HBM.value}")
      slice_ = slice_.with_hbm(int(_HBM.value * slices.GIB))
    config = _CONFIG.value
    devices = slice_.devices(_LIBS.value)
    rows, status = [], 0
    for program in what:
      print(f"compiling {program} for {slice_.name} ...", flush=True)
      report = aot.compile_report(config, slice_, program, devices)
      print("\n".join(report.lines()), flush=True)
      row = {**report.__dict__, "total": report.total, "fits": report.fits, "roofline": report.roofline()}
      if _FILL.value or not report.fits:
        best, too_big, best_report = aot.largest_fitting_batch(config, slice_, program, report, devices,
                                                               log=lambda s: print(f"  {s}", flush=True))
        row["largest_per_chip_batch"], row["smallest_failing_per_chip_batch"] = best, too_big
        if _FILL.value and report.fits:
          print(f"  largest per-chip batch that fits: {best} ({too_big} does not)", flush=True)
        if best_report is not None and best_report is not report:
          print("\n".join(best_report.lines()), flush=True)
          row["largest"] = {**best_report.__dict__, "total": best_report.total, "roofline": best_report.roofline()}
        if not report.fits:
          status = 1
          fix = (f"a per-chip batch of {best} fits ({too_big} does not): --config.train.batch_size="
                 f"{best * report.chips}" if best else
                 "not even one image per chip fits: use bfloat16, remat or a chip with more HBM")
          print(f"error: {program} needs {aot.size(report.total)} per chip on {slice_.name}, more than its "
                f"{aot.size(slice_.chip.hbm_bytes)} of HBM; {fix}", file=sys.stderr, flush=True)
      rows.append(row)
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump(rows, f, indent=1)
  sys.exit(status)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "topology"])
  from spade_jax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
