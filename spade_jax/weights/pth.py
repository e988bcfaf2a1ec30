"""Read PyTorch ``.pth`` state dicts into numpy arrays without importing torch.

Pretrained SPADE / VGG19 / FID-Inception weights ship as torch pickles. This reads
both the zip format (torch >= 1.6) and the legacy format (torch < 1.6, e.g.
torchvision's 2017 ``vgg19-dcbb9e9d.pth``) through a restricted unpickler, so torch
is not a dependency and a checkpoint can never run code.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

from spade_jax.errors import UserError

__all__ = ["load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": "bfloat16",
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
  "ComplexFloatStorage": np.complex64,
  "ComplexDoubleStorage": np.complex128,
  "UntypedStorage": np.uint8,
}


class _Bad(Exception):
  """Internal: what is wrong with the file; the caller prefixes the path."""


class _Refused(pickle.UnpicklingError):
  """A global outside the allow-list: never import or call it."""


class _StorageType:
  """Stand-in for ``torch.FloatStorage`` etc.; only its element dtype matters."""

  def __init__(self, name):
    self.name = name

  def dtype(self, byteorder="little"):
    dt = _STORAGE_DTYPES[self.name]
    if dt == "bfloat16":  # bf16 is the top half of an f32; numpy lacks it natively
      return np.dtype(np.uint16).newbyteorder("<" if byteorder == "little" else ">")
    return np.dtype(dt).newbyteorder("<" if byteorder == "little" else ">")


class _Storage:
  """Flat typed buffer; legacy files deliver the bytes after the pickle, hence lazy."""

  def __init__(self, stype, numel, base=None, base_offset=0):
    self.stype, self.numel, self.base, self.base_offset = stype, numel, base, base_offset
    self._array = None

  def set_bytes(self, raw, byteorder="little"):
    arr = np.frombuffer(raw, self.stype.dtype(byteorder))
    if self.stype.name == "BFloat16Storage":
      try:
        import ml_dtypes

        arr = arr.astype(np.uint16).view(ml_dtypes.bfloat16)
      except ImportError:  # lossless widening to float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    self._array = arr.astype(arr.dtype.newbyteorder("="), copy=False)

  def array(self):
    if self.base is not None:
      return self.base.array()[self.base_offset : self.base_offset + self.numel]
    if self._array is None:
      raise _Bad(f"storage of {self.numel} elements has no data (truncated file?)")
    return self._array


class _Tensor:
  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  return data


_ALLOWED = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals a state dict needs; storages come from ``load_storage``."""

  def __init__(self, file, load_storage=None):
    super().__init__(file, encoding="utf-8")
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[module, name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise _Refused(f"refusing to unpickle global '{module}.{name}' (a state dict only needs tensors and OrderedDicts)")

  def persistent_load(self, pid):
    if self._load_storage is None or not (isinstance(pid, tuple) and pid[:1] == ("storage",)):
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    if not isinstance(pid[1], _StorageType):
      raise pickle.UnpicklingError(f"bad storage type in persistent id {pid!r}")
    return self._load_storage(*pid[1:])


def _load_zip(f):
  with zipfile.ZipFile(f) as zf:
    names = set(zf.namelist())
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkls:
      raise _Bad("zip archive has no '<dir>/data.pkl' entry (not a torch.save checkpoint)")
    prefix = pkls[0][: -len("data.pkl")]
    order = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
    storages = {}

    def load_storage(stype, key, location, numel, *_):
      if key not in storages:
        name = f"{prefix}data/{key}"
        if name not in names:
          raise _Bad(f"missing storage record '{name}'")
        st = storages[key] = _Storage(stype, numel)
        st.set_bytes(zf.read(name), order)
      return storages[key]

    return _Unpickler(io.BytesIO(zf.read(pkls[0])), load_storage).load()


def _load_legacy(f):
  """torch < 1.6: magic, protocol, sys_info, object pickle, key list, then raw storages."""
  try:
    magic = _Unpickler(f).load()
  except _Refused:
    raise
  except Exception:
    magic = None
  if magic != _LEGACY_MAGIC:
    raise _Bad("not a PyTorch checkpoint (neither a zip archive nor a legacy torch pickle)")
  try:
    if _Unpickler(f).load() != _LEGACY_PROTOCOL:
      raise _Bad("unsupported legacy protocol version")
    sys_info = _Unpickler(f).load()
    if not sys_info.get("little_endian", True):
      raise _Bad("big-endian legacy checkpoints are not supported")
    storages = {}

    def load_storage(stype, key, location, numel, view=None, *_):
      if key not in storages:
        storages[key] = _Storage(stype, numel)
      if view:  # torch < 0.4 storage views: (view_key, offset, size) into root `key`
        view_key, offset, size = view
        if view_key not in storages:
          storages[view_key] = _Storage(stype, size, storages[key], offset)
        return storages[view_key]
      return storages[key]

    obj = _Unpickler(f, load_storage).load()
    keys = _Unpickler(f).load()
  except (_Bad, _Refused):
    raise
  except Exception as e:
    raise _Bad(f"truncated or corrupt legacy checkpoint ({type(e).__name__}: {e})") from None
  if not isinstance(keys, list):
    raise _Bad("corrupt legacy checkpoint (storage key list missing)")
  file_size = os.fstat(f.fileno()).st_size
  for key in keys:
    head = f.read(8)
    st = storages.get(key)
    if st is None or len(head) < 8:
      raise _Bad(f"truncated or corrupt legacy checkpoint (storage {key!r} missing)")
    (numel,) = struct.unpack("<q", head)
    nbytes = numel * st.stype.dtype().itemsize
    raw = f.read(nbytes) if 0 <= nbytes <= file_size - f.tell() else b""
    if len(raw) != nbytes:
      raise _Bad(f"truncated file: storage {key!r} needs {nbytes} bytes, found {len(raw)}")
    st.set_bytes(raw)
  return obj


def _materialize(t: _Tensor) -> np.ndarray:
  """Apply offset/sizes/strides (in elements) to the flat storage, then copy."""
  arr = t.storage.array()
  if 0 in t.size:
    return np.zeros(t.size, arr.dtype)
  last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
  if t.offset < 0 or min(t.stride, default=0) < 0 or last >= arr.size:
    raise _Bad(f"tensor of shape {t.size} runs past its storage of {arr.size} elements (corrupt file)")
  view = np.lib.stride_tricks.as_strided(arr[t.offset :], shape=t.size, strides=[s * arr.itemsize for s in t.stride])
  return view.copy()


def _is_tensor_dict(obj):
  return isinstance(obj, dict) and all(isinstance(v, _Tensor) for v in obj.values())


def _select(obj, key, path):
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      avail = list(obj)[:20] if isinstance(obj, dict) else type(obj).__name__
      raise _Bad(f"no entry {key!r} at the top level (found {avail})")
    return obj[key]
  if isinstance(obj, dict) and not _is_tensor_dict(obj):
    for k in ("state_dict", "model"):
      if _is_tensor_dict(obj.get(k)):
        warnings.warn(f"{path}: using the {k!r} entry of the checkpoint (pass key={k!r} to silence this)", stacklevel=3)
        return obj[k]
  return obj


def load_state_dict(
  path, *, key: str | None = None, strip_prefix: str | None = None
) -> collections.OrderedDict[str, np.ndarray]:
  """Load a torch ``.pth`` state dict as ``{name: np.ndarray}`` in file order.

  ``key`` picks a nested entry (e.g. ``'state_dict'``); without it a checkpoint whose
  top level is not all tensors is unwrapped from ``'state_dict'``/``'model'`` with a
  warning. ``strip_prefix='module.'`` removes DataParallel's prefix. bf16 tensors come
  back as ``ml_dtypes.bfloat16`` (float32 if ml_dtypes is missing).
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: checkpoint file not found")
  try:
    with open(path, "rb") as f:
      if f.read(4) == b"PK\x03\x04":
        f.seek(0)
        if not zipfile.is_zipfile(f):
          raise _Bad("truncated or corrupt zip checkpoint (no central directory)")
        f.seek(0)
        try:
          obj = _load_zip(f)
        except (_Bad, _Refused):
          raise
        except Exception as e:
          raise _Bad(f"corrupt zip checkpoint ({type(e).__name__}: {e})") from None
      else:
        f.seek(0)
        obj = _load_legacy(f)
    obj = _select(obj, key, path)
    if not isinstance(obj, dict):
      raise _Bad(f"top-level object is a {type(obj).__name__}, not a state dict")
    out = collections.OrderedDict()
    for name, value in obj.items():
      if not isinstance(value, _Tensor):
        raise _Bad(
          f"entry {name!r} is a {type(value).__name__}, not a tensor "
          "(pass key= to pick the state dict inside a checkpoint)"
        )
      if strip_prefix and isinstance(name, str) and name.startswith(strip_prefix):
        name = name[len(strip_prefix) :]
      out[name] = _materialize(value)
    return out
  except (_Bad, _Refused) as e:
    raise UserError(f"{path}: {e}") from None
