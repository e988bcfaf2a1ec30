"""DRN-D-105 parity with a torch reference in fyu/drn's DRNSeg key layout; Cityscapes id mapping."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spade_jax.evaluation.drn import CITYSCAPES_TRAIN_CLASSES, cityscapes_label_to_train_id, load_drn_seg
from tests.evaluation.torch_refs import TorchDRNSeg, randomize


def test_drn_d_105_logits_match_torch(tmp_path):
  torch.manual_seed(0)
  model = TorchDRNSeg(19)
  up = model.up.weight.detach().clone()
  randomize(model, residual_scale=0.3)
  with torch.no_grad():
    model.up.weight.copy_(up)  # the fixed bilinear kernel, as in the checkpoint
  sd = model.state_dict()
  assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) > 54_000_000
  assert {"base.0.0.weight", "base.5.22.conv3.weight", "base.3.0.downsample.1.running_var", "base.8.1.weight",
          "seg.bias", "up.weight"} <= set(sd)
  path = tmp_path / "drn-d-105_random.pth"
  torch.save({"module." + k: v for k, v in sd.items()}, path)  # DataParallel prefix, as segment.py saves
  x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 48, 64), dtype=np.float32))
  with torch.no_grad():
    ref_logp = model(x).numpy()
    ref_logits = model.up(model.seg(model.base(x))).numpy()
  jmodel, variables = load_drn_seg(path)
  logp, logits = jmodel.apply(variables, x.numpy().transpose(0, 2, 3, 1), return_logits=True)
  logits, logp = np.asarray(logits).transpose(0, 3, 1, 2), np.asarray(logp).transpose(0, 3, 1, 2)
  assert logits.shape == (1, 19, 48, 64)
  assert np.abs(ref_logits).max() > 0.1
  np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
  np.testing.assert_allclose(logp, ref_logp, atol=1e-4, rtol=0)


def test_cityscapes_label_ids_to_train_ids():
  ids = np.arange(-1, 36)
  got = cityscapes_label_to_train_id(ids)
  want = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
          27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
  for i, t in zip(ids, got):
    assert t == want.get(int(i), 255), i
  assert len(CITYSCAPES_TRAIN_CLASSES) == 19 and sorted(want.values()) == list(range(19))
  assert cityscapes_label_to_train_id(np.array([[255, 26]], np.uint8)).tolist() == [[255, 13]]


def test_bilinear_up_matches_conv_transpose_with_arbitrary_kernel():
  import jax.numpy as jnp

  from spade_jax.evaluation.drn import BilinearUp
  rng = np.random.default_rng(1)
  w = rng.standard_normal((3, 1, 16, 16)).astype(np.float32)  # not the bilinear kernel: every tap must be right
  x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
  ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=8, padding=4,
                                             groups=3).numpy()
  got = BilinearUp(3).apply({"params": {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0))}}, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, atol=1e-5, rtol=0)
