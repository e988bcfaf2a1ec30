"""make_dataset: checkpointable iterator state, per-host sharding, eval order, epochs, worker processes."""

from __future__ import annotations

import numpy as np
import pytest

from spade_jax.data import dataset_size, make_dataset, steps_per_epoch

from .util import make_cfg, write_custom


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp("custom")
  write_custom(root / "train", 10, instances=True, seed=0)
  write_custom(root / "val", 5, instances=True, seed=1)
  return root


def _cfg(root, **kw):
  return make_cfg(**{**dict(root=str(root), instance_dir="{split}/instances", no_instance=False), **kw})


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _indices(batches):
  return np.concatenate([b["index"] for b in batches]).tolist()


def test_state_round_trip(root):
  cfg = _cfg(root)
  it = iter(make_dataset(cfg, split="train", batch_size=3, seed=7, train=True))
  for _ in range(4):              # 12 samples: past the first epoch boundary (10 records)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  fresh = iter(make_dataset(cfg, split="train", batch_size=3, seed=7, train=True))
  fresh.set_state(state)
  for e in expected:
    assert _equal(next(fresh), e)
  it.set_state(state)             # the same iterator can rewind too
  assert _equal(next(it), expected[0])


def test_train_shuffles_reseeds_and_drops_remainder(root):
  cfg = _cfg(root)
  batches = list(make_dataset(cfg, split="train", batch_size=3, seed=0, train=True, num_epochs=2))
  assert len(batches) == 6 and all(b["image"].shape == (3, 32, 32, 3) for b in batches)
  idx = _indices(batches)
  assert sorted(idx[:10]) == list(range(10)) and idx[:10] != list(range(10))
  assert idx[:10] != idx[10:]                                   # reshuffled in the second epoch
  other = _indices(make_dataset(cfg, split="train", batch_size=3, seed=1, train=True, num_epochs=1))
  assert other != idx[:9]


def test_eval_is_ordered_single_pass_and_keeps_last_batch(root):
  cfg = _cfg(root, load_size=32)
  a = list(make_dataset(cfg, split="val", batch_size=2, seed=0, train=False))
  b = list(make_dataset(cfg, split="val", batch_size=2, seed=3, train=False))
  assert _indices(a) == list(range(5)) and [x["label"].shape[0] for x in a] == [2, 2, 1]
  assert all(_equal(x, y) for x, y in zip(a, b))               # load == crop: nothing random left


def test_per_host_shards_are_disjoint(root):
  cfg = _cfg(root)
  train = [_indices(make_dataset(cfg, split="train", batch_size=2, seed=0, train=True, num_epochs=1,
                                 process_index=p, process_count=3)) for p in range(3)]
  assert [len(t) for t in train] == [2, 2, 2]                    # 10 -> 9 records, 3 per host, batch 2
  flat = sum(train, [])
  assert len(set(flat)) == len(flat)
  val = [_indices(make_dataset(cfg, split="val", batch_size=2, seed=0, train=False, process_index=p,
                               process_count=2)) for p in range(2)]
  assert val == [[0, 2, 4], [1, 3]]


def test_sizes(root):
  cfg = _cfg(root)
  assert dataset_size(cfg, "train") == 10 and dataset_size(cfg, "val") == 5
  assert steps_per_epoch(cfg, "train", 4) == 2 and steps_per_epoch(cfg, "val", 2) == 2
  assert dataset_size(_cfg(root, max_dataset_size=4), "train") == 4


def test_worker_process_matches_in_process(root):
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags in its worker processes
  cfg = _cfg(root)
  ref = list(make_dataset(cfg, split="train", batch_size=2, seed=5, train=True, num_epochs=1))
  it = iter(make_dataset(_cfg(root, workers=1), split="train", batch_size=2, seed=5, train=True, num_epochs=1))
  try:
    got = list(it)
  finally:
    if hasattr(it, "close"):
      it.close()
  assert len(got) == len(ref) and all(_equal(x, y) for x, y in zip(got, ref))
