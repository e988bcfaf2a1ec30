"""The command line of `python -m spade_jax.convert` (see the package docstring)."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from spade_jax import config as spade_config
from spade_jax.cli import user_errors
from spade_jax.convert.opt_txt import _parse_value
from spade_jax.convert.writer import Converted, convert
from spade_jax.errors import ArgumentParser
from spade_jax.weights.official import ConversionError


def _parser() -> argparse.ArgumentParser:
  p = ArgumentParser(
      prog="python -m spade_jax.convert",
      description="Convert official SPADE PyTorch checkpoints (latest_net_G/D/E.pth) to an Orbax checkpoint.")
  p.add_argument("--generator", "-G", required=True, help="latest_net_G.pth")
  p.add_argument("--discriminator", "-D", help="latest_net_D.pth (optional: lets training continue with this D)")
  p.add_argument("--encoder", "-E", help="latest_net_E.pth (VAE runs: style images -> z)")
  p.add_argument("--opt", help="the run's opt.txt (crop size, aspect ratio, upsampling mode, label_nc, ...)")
  p.add_argument("--preset", help=f"config preset: {', '.join(spade_config.PRESETS)}, or a config .py "
                                  "(default: from opt.txt's dataset_mode)")
  p.add_argument("--out", required=True, help="output workdir; the checkpoint goes to OUT/checkpoints/0")
  p.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in OUT")
  for name, typ in (("label_nc", int), ("crop_size", int), ("load_size", int), ("aspect_ratio", float),
                    ("num_upsampling_layers", str), ("preprocess", str)):
    p.add_argument(f"--{name}", type=typ, default=None)
  for name in ("contain_dontcare_label", "no_instance"):
    p.add_argument(f"--{name}", nargs="?", const="true", default=None, metavar="BOOL")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="any config override, e.g. --set data.load_size=286 (repeatable)")
  p.add_argument("--verbose", "-v", action="store_true", help="a traceback instead of one `error:` line")
  return p


_FLAG_KEYS = {"label_nc": "data.label_nc", "crop_size": "data.crop_size", "load_size": "data.load_size",
              "aspect_ratio": "data.aspect_ratio", "preprocess": "data.preprocess",
              "num_upsampling_layers": "model.num_upsampling_layers",
              "contain_dontcare_label": "data.contain_dontcare_label", "no_instance": "data.no_instance"}


def main(argv: Sequence[str] | None = None) -> Converted:
  """Parses `argv` (default: sys.argv[1:]), converts, prints the summary; errors are raised (see `run`)."""
  return _main(_parser().parse_args(argv))


def run(argv: Sequence[str] | None = None) -> None:
  """The command: as `main`, but a user error (a bad flag too) ends with one `error: ...` line and exit status 2."""
  import sys
  argv = sys.argv[1:] if argv is None else list(argv)
  with user_errors(verbose_flag=any(a in ("-v", "--verbose") for a in argv)):
    _main(_parser().parse_args(argv))


def _main(args) -> Converted:
  flags: dict[str, Any] = {}
  for name, key in _FLAG_KEYS.items():
    value = getattr(args, name)
    if value is not None:
      boolean = name in ("contain_dontcare_label", "no_instance")
      flags[key] = spade_config.as_bool(value, f"--{name}") if boolean else value
  for item in args.set:
    if "=" not in item:
      raise ConversionError(f"--set {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    key = key.removeprefix("config.")
    flags[key] = _parse_value(value)
  result = convert(args.generator, args.discriminator, args.encoder, opt=args.opt, preset=args.preset, flags=flags,
                   out=args.out, overwrite=args.overwrite)
  print(result.summary)
  return result

