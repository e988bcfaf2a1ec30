"""Compile-only NVIDIA GPU devices on a host without a GPU, for ahead-of-time compiles and memory estimates.

jax makes such devices from a PJRT topology (`jax.experimental.topologies.get_topology_desc(platform="cuda", ...)`),
which needs the CUDA PJRT plugin (`jax_plugins.xla_cuda13`, wheels jax-cuda13-plugin and jax-cuda13-pjrt) and a
`GpuTargetConfigProto` that stands in for the absent GPU. The wheels live in a side folder, `<venv>/aot-libs`, not in
site-packages: an importable plugin makes every jax process look for a CUDA backend (~0.1 s more per start here,
and a traceback when the CUDA version check runs without a driver). `ensure_plugin_path` puts that folder on
the import path (`site.addsitedir`) of the processes that want it.

The same side folder can hold libtpu (`pip install --target <folder> 'libtpu==0.0.50.*'`): jax imports `libtpu`
only when a TPU topology is asked for, so `ensure_plugin_path` at any time before then is enough for
`get_topology_desc("v5e:2x2", platform="tpu")`.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import site
import sys
from pathlib import Path

from spade_jax.errors import UserError

__all__ = ["GPU_SPECS_DIR", "DEFAULT_LIBS_DIR", "GPU_KINDS", "ensure_plugin_path", "gpu_devices"]

GPU_SPECS_DIR = Path(__file__).resolve().parent / "gpu_specs"
DEFAULT_LIBS_DIR = Path(sys.prefix) / "aot-libs"
GPU_KINDS = ("h100", "h200", "a100")

_PLUGIN_MODULE = "jax_plugins.xla_cuda13"


def _install_command(libs_dir: Path) -> str:
  """The pip line that puts the plugin, at the installed jaxlib's version (they must match), in `libs_dir`."""
  from jaxlib import version

  v = version.__version__
  return f"pip install --no-deps --target {libs_dir} jax-cuda13-plugin=={v} jax-cuda13-pjrt=={v}"


def ensure_plugin_path(libs_dir: str | os.PathLike | None = None) -> bool:
  """Makes the CUDA plugin (and libtpu) in `libs_dir` importable; True if the CUDA plugin is now found.

  Call it before `import jax` where possible: jaxlib then also loads the plugin's GPU kernels (linear algebra, PRNG,
  Triton), which lowerings such as `jnp.linalg` need. Called later, the plugin still registers (jax reads the
  `jax_plugins` entry points when its backends first start), and if the backends have already started, the plugin
  is registered here by hand. Without a GPU, the plugin's CUDA version check fails (cuInit has no driver): it is
  skipped when JAX_PLATFORMS leaves out cuda, or when JAX_SKIP_CUDA_CONSTRAINTS_CHECK is set, as this does unless
  set already. JAX_PLATFORMS=cpu also keeps jax from probing the side folder's libtpu when its backends start.
  """
  libs = (Path(libs_dir) if libs_dir is not None else DEFAULT_LIBS_DIR).resolve()
  if libs.is_dir():  # else the plugin may still be installed in the environment (pip install .[aot])
    # A site directory, appended to the import path: a plugin or libtpu in site-packages keeps precedence.
    site.addsitedir(str(libs))
    importlib.invalidate_caches()
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  if importlib.util.find_spec(_PLUGIN_MODULE) is None:
    return False
  xb = sys.modules.get("jax._src.xla_bridge")
  # Backends already started: jax will not look for plugins again, so register this one as jax would have.
  if xb is not None and getattr(xb, "_plugins_registered", False) and "cuda" not in xb._topology_factories:
    importlib.import_module(_PLUGIN_MODULE).initialize()
  return True


def _plugin_version_mismatch(libs_dir: Path) -> str | None:
  """A plugin of another jaxlib version loads but fails in obscure ways; say so instead.

  Read from the wheels' metadata in `libs_dir`: the plugin's own version.py is not stamped and asks git."""
  from importlib import metadata

  from jaxlib import version

  found = {d.metadata["Name"]: d.version for d in metadata.distributions(path=[str(libs_dir)])}
  for name in ("jax-cuda13-pjrt", "jax-cuda13-plugin"):
    if found.get(name, version.__version__) != version.__version__:
      return f"{name} in {libs_dir} is version {found[name]}, but jaxlib is {version.__version__}"
  return None


@functools.cache
def _topology_devices(kind: str, count: int, libs_dir: Path) -> tuple:
  """Cached, so that repeated calls give the same device objects, and hence equal meshes and jit cache hits."""
  if not ensure_plugin_path(libs_dir):
    raise UserError(f"no CUDA PJRT plugin ({_PLUGIN_MODULE}, wheels jax-cuda13-plugin and jax-cuda13-pjrt) in "
                     f"{libs_dir}; install it with: {_install_command(libs_dir)}")
  if problem := _plugin_version_mismatch(libs_dir):
    raise UserError(f"{problem}; reinstall it with: {_install_command(libs_dir)}")
  from jax.experimental import topologies

  target_config = (GPU_SPECS_DIR / f"{kind}.txtpb").read_text()
  try:
    topology = topologies.get_topology_desc(platform="cuda", topology=f"1x1x{count}", target_config=target_config)
  except NotImplementedError as e:  # jax has no cuda topology factory: the plugin did not register
    raise UserError(f"the CUDA plugin in {libs_dir} did not register with jax ({e}); see the log above for why, "
                     f"and call ensure_plugin_path before jax starts its backends") from e
  return tuple(topology.devices)


def gpu_devices(kind: str, count: int, *, libs_dir: str | os.PathLike | None = None) -> list:
  """`count` compile-only devices of one host with `count` GPUs of `kind` ("h100", "h200", "a100").

  They serve `jax.sharding.Mesh` and `jit(...).lower(...).compile()` (and `memory_analysis()`; `cost_analysis()` is
  None for these), but cannot run anything. Compiling needs a CUDA toolkit's libdevice (nvvm/libdevice) and ptxas
  or libnvJitLink, found as on a GPU host (here /usr/local/cuda and the venv's nvidia packages); a host without them
  can take pip's (`nvidia-cuda-nvcc==13.0.* nvidia-nvvm==13.0.*`, then CUDA_ROOT=<their nvidia/cu13>).
  """
  if kind not in GPU_KINDS:
    raise UserError(f"unknown GPU kind {kind!r}; one of {', '.join(GPU_KINDS)} (specs in {GPU_SPECS_DIR})")
  if not isinstance(count, int) or count < 1:
    raise UserError(f"count must be a positive int, not {count!r}")
  libs = Path(libs_dir) if libs_dir is not None else DEFAULT_LIBS_DIR
  return list(_topology_devices(kind, count, libs.resolve()))
