"""PyTorch state dict -> Flax variables, checked key-for-key and shape-for-shape against the Flax model."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import traverse_util

__all__ = ["convert_state_dict"]


def convert_state_dict(state_dict: Mapping[str, np.ndarray], expected, module_path: Callable[[str], tuple],
                       skip: Callable[[str], bool] = lambda k: False) -> dict:
  """Map torch keys to `expected` (a tree of ShapeDtypeStructs from `jax.eval_shape(model.init, ...)`).

  `module_path(prefix)` gives the Flax module path of a torch module prefix (the key without its last field).
  Conv weights OIHW -> HWIO `kernel`, Linear (out, in) -> (in, out) `kernel`, BN weight/bias -> `scale`/`bias`,
  running_mean/var -> batch_stats `mean`/`var`; `num_batches_tracked` is dropped. Every expected leaf must be
  filled exactly once and every torch tensor used, else a ValueError lists what is wrong.
  """
  want = {k: v for k, v in traverse_util.flatten_dict(jax.tree_util.tree_map(lambda x: x, dict(expected))).items()}
  out, unused = {}, []
  for key, value in state_dict.items():
    value = np.asarray(value)
    if key.endswith("num_batches_tracked") or skip(key):
      continue
    prefix, _, field = key.rpartition(".")
    path = tuple(module_path(prefix))
    if field == "weight" and value.ndim == 4:
      leaves = [(("params",) + path + ("kernel",), value.transpose(2, 3, 1, 0))]
    elif field == "weight" and value.ndim == 2:
      leaves = [(("params",) + path + ("kernel",), value.T)]
    elif field == "weight" and value.ndim == 1:
      leaves = [(("params",) + path + ("scale",), value)]
    elif field == "bias":
      leaves = [(("params",) + path + ("bias",), value)]
    elif field == "running_mean":
      leaves = [(("batch_stats",) + path + ("mean",), value)]
    elif field == "running_var":
      leaves = [(("batch_stats",) + path + ("var",), value)]
    else:
      unused.append(key)
      continue
    for fpath, arr in leaves:
      if fpath not in want:
        unused.append(f"{key} (-> {'/'.join(fpath)})")
        continue
      if tuple(want[fpath].shape) != arr.shape:
        raise ValueError(f"{key}: shape {arr.shape} after conversion, Flax {'/'.join(fpath)} wants "
                         f"{tuple(want[fpath].shape)}")
      out[fpath] = np.ascontiguousarray(arr, dtype=np.float32)
  missing = sorted("/".join(p) for p in want if p not in out)
  if unused or missing:
    raise ValueError(f"state dict does not match the Flax model: {len(unused)} unused torch tensors "
                     f"{unused[:8]}, {len(missing)} Flax leaves missing {missing[:8]}")
  return traverse_util.unflatten_dict(out)
