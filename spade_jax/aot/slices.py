"""The accelerator slices a config can be compiled for ahead of time: Cloud TPU slice names and GPU hosts.

Per chip: HBM, peak dense bfloat16 FLOP/s and HBM bandwidth, from the vendors' published specifications (Cloud TPU
system architecture pages; NVIDIA's H100 / H200 / A100 SXM data sheets). float32 convolutions run at XLA's default
precision, which on TPU is one bfloat16 pass (so the bfloat16 peak applies) and on NVIDIA GPUs TF32 (half the
bfloat16 peak).
"""
from __future__ import annotations

import dataclasses

from spade_jax.aot import gpu
from spade_jax.errors import UserError

GIB = 1 << 30
TERA = 1e12


@dataclasses.dataclass(frozen=True)
class Chip:
  kind: str           # what jax calls it ("TPU v5 lite") or our GPU spec name ("h100")
  hbm_bytes: int
  peak_bf16: float    # FLOP/s
  peak_f32: float     # FLOP/s at XLA's default precision
  hbm_bandwidth: float  # bytes/s


TPU_CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275 * TERA, 275 * TERA, 1.2e12),
    "v5e": Chip("TPU v5 lite", 16 * GIB, 197 * TERA, 197 * TERA, 0.819e12),
    "v5p": Chip("TPU v5", 95 * GIB, 459 * TERA, 459 * TERA, 2.765e12),
    "v6e": Chip("TPU v6 lite", 32 * GIB, 918 * TERA, 918 * TERA, 1.64e12),
}
GPU_CHIPS = {
    "a100": Chip("a100", 80 * GIB, 312 * TERA, 156 * TERA, 2.039e12),
    "h100": Chip("h100", 80 * GIB, 989 * TERA, 494.5 * TERA, 3.35e12),
    "h200": Chip("h200", 141 * GIB, 989 * TERA, 494.5 * TERA, 4.8e12),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A named slice: `chips` devices of one `chip` kind, and how jax's compile-only topology describes them."""
  name: str
  platform: str       # "tpu" or "gpu"
  chip: Chip
  chips: int
  topology: str       # TPU: "v5e:2x4"; GPU: our spec name ("h100")
  host_bounds: tuple[int, int, int] = (1, 1, 1)
  chip_config: str = "default"

  def with_hbm(self, hbm_bytes: int) -> Slice:
    """The same slice, planned against `hbm_bytes` per chip (headroom, or a share of the chip)."""
    return dataclasses.replace(self, chip=dataclasses.replace(self.chip, hbm_bytes=hbm_bytes))

  def devices(self, libs_dir=None) -> list:
    """Compile-only devices of the slice (no accelerator needed; libtpu or the CUDA plugin must be importable, from
    the environment or from `libs_dir`, default <venv>/aot-libs)."""
    if self.platform == "gpu":
      return gpu.gpu_devices(self.topology, self.chips, libs_dir=libs_dir)
    from jax.experimental import topologies
    try:
      desc = topologies.get_topology_desc(platform="tpu", topology_name=self.topology,
                                          chip_config_name=self.chip_config, chips_per_host_bounds=self.host_bounds,
                                          num_slices=1)
    except ModuleNotFoundError as e:
      raise UserError(f"compiling for {self.name} needs libtpu, which is not importable ({e}); `make setup-aot` "
                       "installs it beside the environment (or pip install 'libtpu==0.0.50.*')") from e
    return list(desc.devices)


def _tpu_slices() -> dict[str, Slice]:
  out = {}
  # v4 and v5p count TensorCores (2 per chip, one megacore device); v5e and v6e count chips. Multi-host slices
  # have 4 chips per host; v5e-8 and v6e-8 are single hosts of 8.
  for gen, cores_per_chip, shapes in [
      ("v4", 2, {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8", 512: "4x8x8"}),
      ("v5p", 2, {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8", 512: "4x8x8"}),
      ("v5e", 1, {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}),
      ("v6e", 1, {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}),
  ]:
    for n, shape in shapes.items():
      chips = n // cores_per_chip
      if chips == 1:
        bounds = (1, 1, 1)
      elif gen in ("v5e", "v6e") and chips == 8:
        bounds = (2, 4, 1)
      else:
        bounds = (2, 2, 1)
      out[f"{gen}-{n}"] = Slice(f"{gen}-{n}", "tpu", TPU_CHIPS[gen], chips, f"{gen}:{shape}", bounds,
                                "megacore" if cores_per_chip == 2 else "default")
  return out


def _gpu_slices() -> dict[str, Slice]:
  return {f"{kind}-{n}": Slice(f"{kind}-{n}", "gpu", chip, n, kind)
          for kind, chip in GPU_CHIPS.items() for n in (1, 2, 4, 8)}


SLICES = {**_tpu_slices(), **_gpu_slices()}


def get(name: str) -> Slice:
  if name not in SLICES:
    raise UserError(f"unknown --topology={name!r}; one of: {', '.join(SLICES)}")
  return SLICES[name]
