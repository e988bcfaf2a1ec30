"""spade_jax.weights.pth against torch.save as the oracle, in both file formats."""

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from spade_jax.weights.pth import load_state_dict

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[2]
FORMATS = pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])


def _tensors():
  torch.manual_seed(0)
  big = torch.arange(40, dtype=torch.float32)
  return collections.OrderedDict(
    f32=torch.randn(3, 4),
    f16=torch.randn(2, 5).half(),
    f64=torch.randn(3, dtype=torch.float64),
    bf16=torch.randn(6).bfloat16(),
    num_batches_tracked=torch.tensor(7),
    i32=torch.arange(-3, 3, dtype=torch.int32),
    u8=torch.arange(5, dtype=torch.uint8),
    mask=torch.tensor([True, False, True]),
    transposed=torch.randn(3, 5).t(),
    view=big[10:22].view(3, 4),  # storage offset 10, shares storage with `big`
    strided=big[1::3],
    big=big,
    empty=torch.zeros(0, 3),
  )


def _save(obj, path, zip_format):
  torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
  return path


def _assert_same(got, want):
  assert list(got) == list(want)
  for k, t in want.items():
    t = t.detach()
    if t.dtype == torch.bfloat16:
      assert got[k].dtype.name == "bfloat16"
      np.testing.assert_array_equal(got[k].astype(np.float32), t.float().numpy())
    else:
      assert got[k].dtype == t.numpy().dtype and got[k].shape == tuple(t.shape), k
      np.testing.assert_array_equal(got[k], t.numpy())


@FORMATS
def test_tensor_kinds(tmp_path, zip_format):
  sd = _tensors()
  got = load_state_dict(_save(sd, tmp_path / "t.pth", zip_format))
  assert isinstance(got, collections.OrderedDict)
  _assert_same(got, sd)
  assert got["num_batches_tracked"].shape == () and got["num_batches_tracked"].dtype == np.int64
  got["big"][0] = -1  # results own their memory, views are not aliased
  assert got["view"][0, 0] == 10


@FORMATS
def test_module_state_dict(tmp_path, zip_format):
  m = torch.nn.Sequential(
    torch.nn.Conv2d(3, 8, 3),
    torch.nn.BatchNorm2d(8),
    torch.nn.ReLU(),
    torch.nn.Flatten(),
    torch.nn.Linear(8 * 4 * 4, 5),
  )
  m(torch.randn(2, 3, 6, 6))  # move BN running stats off their defaults
  sd = m.state_dict()
  _assert_same(load_state_dict(_save(sd, tmp_path / "m.pth", zip_format)), sd)


@FORMATS
def test_parameters_nesting_and_prefix(tmp_path, zip_format):
  w = torch.nn.Parameter(torch.randn(2, 3))
  ckpt = {"epoch": 3, "state_dict": {"module.w": w, "module.b": torch.ones(2)}}
  p = _save(ckpt, tmp_path / "c.pth", zip_format)
  with pytest.warns(UserWarning, match="'state_dict'"):
    got = load_state_dict(p)
  assert list(got) == ["module.w", "module.b"]
  got = load_state_dict(p, key="state_dict", strip_prefix="module.")
  assert list(got) == ["w", "b"]
  np.testing.assert_array_equal(got["w"], w.detach().numpy())
  with pytest.raises(ValueError, match="no entry 'nope'"):
    load_state_dict(p, key="nope")
  with pytest.raises(ValueError, match="'epoch' is a int"):
    load_state_dict(_save({"epoch": 3, "w": w}, tmp_path / "d.pth", zip_format))


def test_zip_top_folder_name_varies(tmp_path):
  src = _save(_tensors(), tmp_path / "a.pth", True)
  dst = tmp_path / "renamed.pth"
  with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
    for n in zi.namelist():
      zo.writestr("some_other_dir/" + n.split("/", 1)[1], zi.read(n))
  _assert_same(load_state_dict(dst), _tensors())


def _legacy_bytes(obj, keys, raw, persistent_id):
  """Hand-written torch<1.6 file, e.g. torch 0.3's storage views (vgg19-dcbb9e9d.pth era)."""

  class P(pickle.Pickler):
    def persistent_id(self, o):
      return persistent_id(o)

  buf = io.BytesIO()
  for x in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
    pickle.dump(x, buf, protocol=2)
  P(buf, protocol=2).dump(obj)
  pickle.dump(keys, buf, protocol=2)
  buf.write(raw)
  return buf.getvalue()


def test_legacy_storage_view(tmp_path):
  class S:  # marker for a storage
    def __init__(self, pid):
      self.pid = pid

  class T:
    def __init__(self, s, off, size, stride):
      self.args = (s, off, size, stride)

    def __reduce__(self):
      return torch._utils._rebuild_tensor, self.args

  root = np.arange(10, dtype=np.float32)
  view = S(("storage", torch.FloatStorage, "root", "cpu", 10, ("v", 2, 6)))
  obj = collections.OrderedDict(a=T(view, 1, (2, 2), (2, 1)))
  raw = np.int64(10).tobytes() + root.tobytes()
  data = _legacy_bytes(obj, ["root"], raw, lambda o: o.pid if isinstance(o, S) else None)
  (tmp_path / "old.pth").write_bytes(data)
  got = load_state_dict(tmp_path / "old.pth")
  np.testing.assert_array_equal(got["a"], root[2:][1:5].reshape(2, 2))


@FORMATS
def test_works_without_torch(tmp_path, zip_format):
  sd = _tensors()
  del sd["bf16"]
  p = _save(sd, tmp_path / "t.pth", zip_format)
  np.savez(tmp_path / "want.npz", **{k: v.numpy() for k, v in sd.items()})
  code = f"""
import sys, numpy as np
sys.modules['torch'] = None
from spade_jax.weights.pth import load_state_dict
got, want = load_state_dict({str(p)!r}), np.load({str(tmp_path / "want.npz")!r})
assert list(got) == list(want.files)
for k in want.files:
    np.testing.assert_array_equal(got[k], want[k]); assert got[k].dtype == want[k].dtype
assert sys.modules['torch'] is None
print('ok')
"""
  r = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
  )
  assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    load_state_dict(tmp_path / "nope.pth")


def test_garbage_file(tmp_path):
  p = tmp_path / "garbage.pth"
  p.write_bytes(b"<html>404 not found</html>" * 10)
  with pytest.raises(ValueError, match=r"garbage\.pth.*neither a zip archive nor a legacy"):
    load_state_dict(p)


@FORMATS
def test_truncated(tmp_path, zip_format):
  p = _save(_tensors(), tmp_path / "t.pth", zip_format)
  data = p.read_bytes()
  for cut in (len(data) // 2, len(data) - 5, 200):
    p.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"t\.pth: .*(truncated|corrupt)"):
      load_state_dict(p)


@FORMATS
def test_disallowed_global(tmp_path, zip_format):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return os.system, (f"touch {marker}",)

  payload = pickle.dumps({"w": Evil()}, protocol=2)
  p = tmp_path / "evil.pth"
  if zip_format:
    with zipfile.ZipFile(p, "w") as z:
      z.writestr("archive/data.pkl", payload)
  else:
    p.write_bytes(_legacy_bytes({"w": Evil()}, [], b"", lambda o: None))
  with pytest.raises(ValueError, match=r"evil\.pth: refusing to unpickle global '(posix|os)\.system'"):
    load_state_dict(p)
  assert not marker.exists()
