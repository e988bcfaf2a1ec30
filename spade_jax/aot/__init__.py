"""Ahead-of-time compilation for TPU slices and GPU hosts, on any host: does a config fit, and how fast can it be?

`python -m spade_jax.aot --topology=v5e-8 --config=configs/coco_stuff.py --what=train,synthesize` compiles the
train step and the synthesis program with the real TPU (libtpu) or GPU (CUDA plugin) compiler for compile-only
devices of the slice, then reports what the compiler planned: per-chip memory against HBM, FLOPs and bytes per
chip-step, the collectives, and a roofline bound. Nothing runs; no accelerator is needed. Programs are the ones a
host of that slice builds (`spade_jax.platforms`: formulations follow the platform compiled for, not this host).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time

from spade_jax.aot import gpu, slices
from spade_jax.errors import UserError

__all__ = ["prepare_process", "Report", "compile_report", "largest_fitting_batch", "collectives"]

WHAT = ("train", "synthesize")


def prepare_process(libs_dir=None) -> None:
  """Before jax starts its backends: compile-only work needs only the CPU backend (JAX_PLATFORMS=cpu keeps jax from
  probing libtpu or a CUDA driver at start), libtpu must not query a cloud metadata server nor lock the TPU for
  this one process, and the side folder of `make setup-aot` (libtpu, the CUDA plugin) must be importable."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip to guard (/tmp/libtpu_lockfile)
  gpu.ensure_plugin_path(libs_dir)


@dataclasses.dataclass
class Report:
  """What the compiler planned for one program on one slice (per chip unless said otherwise)."""
  program: str
  slice: str
  chips: int
  global_batch: int
  dtype: str
  compile_s: float
  arguments: int        # bytes
  outputs: int
  aliased: int          # outputs written over donated arguments
  temporaries: int
  code: int
  hbm: int
  flops: float | None   # per chip-step
  bytes_accessed: float | None
  flops_source: str     # "compiler" or "unoptimised HLO" (GPU: XLA's GPU cost analysis gives none)
  collectives: dict[str, tuple[int, int]]  # kind -> (count, bytes)
  peak_flops: float
  hbm_bandwidth: float

  @property
  def per_chip_batch(self) -> float:
    return self.global_batch / self.chips

  @property
  def total(self) -> int:
    """Peak HBM the program needs: arguments, outputs not written in place, temporaries, code."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

  @property
  def fits(self) -> bool:
    return self.total <= self.hbm

  def roofline(self) -> dict | None:
    """Images/s per chip if compute-bound and if HBM-bound, which binds, and FLOPs per byte."""
    if not self.flops or not self.bytes_accessed:
      return None
    compute = self.peak_flops * self.per_chip_batch / self.flops
    memory = self.hbm_bandwidth * self.per_chip_batch / self.bytes_accessed
    return {"compute_images_s": compute, "memory_images_s": memory,
            "bound": "compute" if compute <= memory else "memory",
            "images_s": min(compute, memory), "intensity": self.flops / self.bytes_accessed}

  def lines(self) -> list[str]:
    gib = size
    out = [f"{self.program} on {self.slice} ({self.chips} chips), global batch {self.global_batch} "
           f"({self.per_chip_batch:g} per chip), {self.dtype}: compiled in {self.compile_s:.1f} s",
           f"  memory per chip: {gib(self.total)} of {gib(self.hbm)} HBM ({100 * self.total / self.hbm:.0f}%): "
           f"arguments {gib(self.arguments)}, outputs {gib(self.outputs)} ({gib(self.aliased)} in place), "
           f"temporaries {gib(self.temporaries)}, code {gib(self.code)}"]
    if self.flops:
      out.append(f"  per chip-step: {self.flops / 1e12:.3f} TFLOP ({self.flops_source}), "
                 + (f"{self.bytes_accessed / 1e9:.2f} GB accessed" if self.bytes_accessed else "bytes not reported"))
    if roof := self.roofline():
      out.append(f"  roofline per chip: {roof['images_s']:.1f} images/s ({roof['bound']}-bound; compute "
                 f"{roof['compute_images_s']:.1f}, HBM {roof['memory_images_s']:.1f}; {roof['intensity']:.0f} FLOP/B "
                 f"at {self.peak_flops / 1e12:.0f} TFLOP/s, {self.hbm_bandwidth / 1e12:.2f} TB/s)")
    kinds = ", ".join(f"{k} {n} ({b / 2**20:.1f} MiB)" for k, (n, b) in sorted(self.collectives.items()))
    out.append(f"  collectives: {kinds or 'none'}")
    return out


def size(n: float) -> str:
  """Bytes as GiB, or MiB below one GiB."""
  return f"{n / slices.GIB:.2f} GiB" if n >= slices.GIB else f"{n / 2**20:.1f} MiB"


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_COLLECTIVE = re.compile(r"= (?P<shape>.*?) (?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|"
                         r"collective-permute)(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")


def collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
  """kind -> (count, bytes of their results) in a compiled program's HLO text; an async pair counts once (its
  -start), and of a -start's (operands, results) tuple only the results count."""
  found: dict[str, list[int]] = {}
  for m in _COLLECTIVE.finditer(hlo_text):
    arrays = [math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES.get(t, 4)
              for t, dims in _ARRAY.findall(m.group("shape")) if dims]
    if m.group("start") and m.group("op") in ("all-gather", "collective-permute", "all-to-all", "reduce-scatter"):
      arrays = arrays[len(arrays) // 2:]
    count, size = found.setdefault(m.group("op"), [0, 0]), sum(arrays)
    count[0] += 1
    count[1] += size
  return {k: (v[0], v[1]) for k, v in found.items()}


def _mesh(devices):
  import jax
  import numpy as np
  from jax.sharding import AxisType

  from spade_jax.parallel import DATA
  return jax.sharding.Mesh(np.array(devices), (DATA,), axis_types=(AxisType.Auto,))


def _program(config, mesh, what: str):
  """(jitted program, its abstract arguments) as train.py / the synthesis path builds them on `mesh`."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from spade_jax import parallel, platforms
  from spade_jax.networks import Networks
  from spade_jax.training.state import create_train_state

  data, repl = NamedSharding(mesh, P(parallel.DATA)), NamedSharding(mesh, P())
  b = int(config.train.batch_size)
  platform = platforms.platform_of(mesh)
  nets = Networks.from_config(config, platform=platform)
  h, w = nets.image_size
  batch = {"label": jax.ShapeDtypeStruct((b, h, w), jnp.int32, sharding=data)}
  if not config.data.no_instance:
    batch["instance"] = jax.ShapeDtypeStruct((b, h, w), jnp.int32, sharding=data)
  on = lambda tree, sharding: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
  if what == "train":
    batch["image"] = jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32, sharding=data)
    _, setup = create_train_state(config, mesh, fresh=False)
    vgg = {}
    if setup.spec.vgg is not None:
      vgg = on(jax.eval_shape(lambda: setup.spec.vgg.init(jax.random.key(0), jnp.zeros((1, h, w, 3))))["params"],
               repl)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=repl)
    return setup.step, (setup.target(), batch, vgg, key)
  if what != "synthesize":
    raise UserError(f"--what must be among {WHAT}, got {what!r}")
  z = jax.ShapeDtypeStruct((b, nets.G.z_dim), jnp.float32, sharding=data) if nets.E is not None else None
  one_z = None if z is None else jnp.zeros((1, z.shape[1]))
  g_vars = jax.eval_shape(lambda: nets.G.init(jax.random.key(0), jnp.zeros((1, h, w, nets.semantic_nc)), one_z))
  g_vars = on({k: v for k, v in g_vars.items() if k in ("params", "batch_stats", "spectral")}, repl)

  jitted = jax.jit(nets.synthesize, out_shardings=data, compiler_options=platforms.compiler_options(platform))
  return jitted, (g_vars, batch, z)


def _cost(compiled, lowered, chips: int):
  """(flops, bytes accessed, source) per chip-step. XLA's GPU compiler reports no cost analysis (and jax's
  `Lowered.cost_analysis` needs a non-plugin backend): then XLA's HLO cost analysis of the unoptimised, unpartitioned
  program, run by the CPU client, divided by the chips. Its FLOPs are the program's (a data-parallel step splits all
  but the optimiser update, which is small); its bytes count every op's operands, before fusion: an upper bound."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  if cost and cost.get("flops"):
    return float(cost["flops"]), float(cost.get("bytes accessed") or 0) or None, "compiler"
  try:
    from jax._src import xla_bridge
    from jax._src.lib import _jax
    cost = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), lowered.compiler_ir("hlo").as_hlo_module())
  except Exception:  # noqa: BLE001 - another jaxlib without this entry point: report no cost
    return None, None, "none"
  if cost and cost.get("flops"):
    return (float(cost["flops"]) / chips, float(cost.get("bytes accessed") or 0) / chips or None,
            "unoptimised HLO / chips")
  return None, None, "none"


def lower(config, devices, what: str):
  """`what` ('train' or 'synthesize') of `config` lowered for a mesh of compile-only `devices` (`compile_report`
  checks the batch against them first)."""
  import jax
  mesh = _mesh(devices)
  jitted, args = _program(config, mesh, what)  # outside the mesh: nothing may run on compile-only devices
  with jax.set_mesh(mesh):
    return jitted.lower(*args)


def compile_report(config, slice_: slices.Slice, what: str, devices=None, lowered=None) -> Report:
  """Compiles `what` ('train' or 'synthesize') of `config` for the slice (its compile-only `devices`; `lowered`:
  already lowered for them) and reports."""
  import jax
  devices = devices if devices is not None else slice_.devices()
  b = int(config.train.batch_size)
  if b < 1 or b % len(devices):
    raise UserError(f"config.train.batch_size={b} must be a positive multiple of the {len(devices)} chips of "
                     f"{slice_.name}")
  lowered = lowered if lowered is not None else lower(config, devices, what)
  dtype = str(config.model.dtype)
  report = functools.partial(
      Report, program=what, slice=slice_.name, chips=len(devices), global_batch=b, dtype=dtype,
      hbm=slice_.chip.hbm_bytes, peak_flops=slice_.chip.peak_bf16 if dtype == "bfloat16" else slice_.chip.peak_f32,
      hbm_bandwidth=slice_.chip.hbm_bandwidth)
  t = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program that cannot fit
    needed = _HBM_OOM.search(str(e))
    if not needed:
      raise
    return report(compile_s=time.perf_counter() - t, arguments=0, outputs=0, aliased=0, code=0,
                  temporaries=int(float(needed.group(1)) * _UNITS[needed.group(2)]), flops=None,
                  bytes_accessed=None, flops_source="none (out of HBM at compile time)", collectives={})
  seconds = time.perf_counter() - t
  mem = compiled.memory_analysis()
  flops, accessed, source = _cost(compiled, lowered, len(devices))
  return report(compile_s=seconds, arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
                aliased=mem.alias_size_in_bytes, temporaries=mem.temp_size_in_bytes,
                code=mem.generated_code_size_in_bytes, flops=flops, bytes_accessed=accessed, flops_source=source,
                collectives=collectives(compiled.as_text()))


# libtpu: "RESOURCE_EXHAUSTED: ... CompileTimeHbmOom: ... the total memory required for HLO temporaries (40.01G)
# exceeds available HBM (15.75G)"
_HBM_OOM = re.compile(r"CompileTimeHbmOom.*?required[^(]*\((\d+(?:\.\d+)?)([KMGT])\)", re.S)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def largest_fitting_batch(config, slice_: slices.Slice, what: str, report: Report, devices=None,
                          log=lambda s: None, compile_fn=None) -> tuple[int, int | None, Report | None]:
  """(a per-chip batch that fits the chip's HBM, the smallest known not to (None if none was tried), the fitting
  one's report), found by compiling; the two are within 1/16 of each other (or adjacent).

  Memory is about linear in the batch: a second compile gives the slope, the line predicts the largest fitting
  batch, and bisection around the prediction confirms it. (0, 1, None) when not even one image per chip fits."""
  devices = devices if devices is not None else slice_.devices()
  n = len(devices)
  reports = {int(report.per_chip_batch): report}

  def at(per_chip: int) -> Report:
    if per_chip not in reports:
      cfg = config.copy_and_resolve_references()
      cfg.train.batch_size = per_chip * n
      log(f"compiling {what} at {per_chip} per chip")
      reports[per_chip] = (compile_fn or compile_report)(cfg, slice_, what, devices)
    return reports[per_chip]

  b0 = int(report.per_chip_batch)
  b1 = b0 * 2 if report.fits else max(1, b0 // 2)
  b1 = b0 + 1 if b1 == b0 else b1
  slope = (at(b1).total - report.total) / (b1 - b0)
  guess = int((slice_.chip.hbm_bytes - report.total) / slope + b0) if slope > 0 else 0
  for _ in range(12):
    lo = max([b for b, r in reports.items() if r.fits], default=0)
    hi = min([b for b, r in reports.items() if not r.fits], default=None)
    if hi is not None and hi - lo <= max(1, lo // 16):
      break
    b = guess if guess not in reports and lo < guess and (hi is None or guess < hi) else \
        (lo + hi) // 2 if hi is not None else 2 * max(lo, 1)
    at(max(b, 1))
  lo = max([b for b, r in reports.items() if r.fits], default=0)
  hi = min([b for b, r in reports.items() if not r.fits], default=None)
  return lo, hi, reports.get(lo)
