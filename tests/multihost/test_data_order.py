"""The training data order is global: whatever the number of processes, their shares of every global batch are
disjoint and together are the one-process batch (the same records, augmented the same way), and a resumed pipeline
continues the global order from any step."""
import numpy as np
import pytest

from spade_jax import parallel
from spade_jax.data import make_dataset
from tests.data.util import make_cfg, write_custom

GLOBAL = 6


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  root = write_custom(tmp_path_factory.mktemp("custom"), 10)
  return make_cfg(image_dir=str(root / "images"), label_dir=str(root / "labels"))


def _batches(cfg, n, **kw):
  it = iter(make_dataset(cfg, split="train", seed=3, train=True, **kw))
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("rows", [[[0, 1, 2], [3, 4, 5]], [[0, 1], [2, 3], [4, 5]], [[1, 3, 5], [0, 2, 4]]])
def test_process_shares_are_disjoint_and_make_the_one_process_batch(cfg, rows):
  one = _batches(cfg, 4, batch_size=GLOBAL)  # 24 records: past the second epoch boundary (10 records)
  shares = [_batches(cfg, 4, batch_size=len(r), process_count=len(rows), rows=r) for r in rows]
  for b, whole in enumerate(one):
    got = {k: np.zeros_like(v) for k, v in whole.items()}
    for r, share in zip(rows, shares):
      for k in whole:
        got[k][r] = share[b][k]
    assert sorted(np.concatenate([s[b]["index"] for s in shares]).tolist()) == sorted(whole["index"].tolist())
    for k in whole:  # record indices and the augmented images and labels themselves
      np.testing.assert_array_equal(got[k], whole[k])
  assert sorted(one[0]["index"].tolist() + one[1]["index"].tolist()[:4]) == list(range(10))  # one epoch, shuffled


def test_resume_at_a_step_continues_the_global_order(cfg):
  one = _batches(cfg, 5, batch_size=GLOBAL)
  later = _batches(cfg, 2, batch_size=GLOBAL, start_batch=3)
  for a, b in zip(one[3:], later):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  share = _batches(cfg, 2, batch_size=3, process_count=2, rows=[3, 4, 5], start_batch=3)
  for a, b in zip(one[3:], share):
    np.testing.assert_array_equal(a["index"][3:], b["index"])


def test_local_rows_of_one_process_are_the_whole_batch():
  mesh = parallel.make_mesh(4)
  assert parallel.local_rows(mesh, 8).tolist() == list(range(8))
  assert parallel.check_batch_size(8, mesh) == 8
