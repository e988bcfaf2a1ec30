"""The grain input pipeline: source -> shuffle/repeat -> decode -> this host's rows of each global batch -> drop bad
-> batch (training; evaluation: source -> per-host slice -> decode -> batch).

Batches are dicts of numpy arrays with a leading per-host batch dim B::

    {'image': f32 BxHxWx3 in [-1,1], 'label': i32 BxHxW, 'instance': i32 BxHxW (unless no_instance),
     'index': i64 B (source record index; `build_source(...)[i]` gives the files)}

The iterator is checkpointable (`it.get_state()` / `it.set_state(state)` reproduce the next batch exactly),
so a resumed run continues mid-epoch instead of restarting the epoch as the official code does (#147).
"""

from __future__ import annotations

import grain
import numpy as np

from spade_jax.data.decode import LoadSample
from spade_jax.data.sources import build_source
from spade_jax.data.transforms import TransformOptions

READ_THREADS = 4


def dataset_size(data_cfg, split: str) -> int:
  """Number of (paired) records of `split` after max_dataset_size."""
  return len(build_source(data_cfg, split))


def steps_per_epoch(data_cfg, split: str, global_batch: int) -> int:
  """Full global batches per epoch (the last partial batch is dropped, like the official drop_last)."""
  return dataset_size(data_cfg, split) // int(global_batch)


def _derived_seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class HostRows(grain.MapDataset):
  """This host's rows of each global batch of a globally ordered stream: element i is record
  ``parent[(start_batch + i // len(rows)) * global_batch + rows[i % len(rows)]]``. Only complete global batches."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, rows, global_batch: int, start_batch: int = 0):
    super().__init__(parent)
    self._rows = tuple(int(r) for r in rows)
    self._global, self._start = int(global_batch), int(start_batch)
    if not self._rows or min(self._rows) < 0 or max(self._rows) >= self._global:
      raise ValueError(f"rows {self._rows} must be a non-empty subset of range({self._global})")
    self._length = max(0, len(parent) // self._global - self._start) * len(self._rows)

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    batch, j = divmod(index, len(self._rows))
    return (self._start + batch) * self._global + self._rows[j]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    with self._stats.record_self_time():
      parent_index = self._parent_index(index)
    return self._parent[parent_index]

  def __str__(self) -> str:
    return f"HostRows(rows={self._rows}, global_batch={self._global}, start_batch={self._start})"


def make_dataset(data_cfg, *, split: str, batch_size: int, seed: int, train: bool, process_index: int = 0,
                 process_count: int = 1, rows=None, start_batch: int = 0, num_epochs: int | None = None,
                 source=None) -> grain.IterDataset:
  """A grain IterDataset of numpy batches for this host.

  Training: the order is global, the same for any number of hosts. The whole split is shuffled with `seed`
  (reshuffled each epoch, `num_epochs` times; None = forever), each record gets its random crop/flip from its
  position in that stream, and global batch b is the stream's records [b*G, (b+1)*G) with G = batch_size *
  process_count. This host loads `rows` of every global batch (default: its contiguous share, rows
  [process_index*batch_size, (process_index+1)*batch_size)): the union over hosts is the one-host batch, and a run
  resumes with another number of hosts from `start_batch` (the global batches already trained on). Evaluation:
  each host takes ``[process_index::process_count]`` of the split, file order, no flip, one pass (or `num_epochs`),
  and keeps the last partial batch (hosts may then differ by one batch).

  Bad samples are dropped before batching in ``on_bad_sample='skip'`` mode, so batches stay full (training then
  takes the next records of this host's share: exact agreement with another number of hosts needs no skips).
  `source` overrides `build_source(data_cfg, split)` (tests, or a caller that already built it).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
  source = build_source(data_cfg, split) if source is None else source
  ds = grain.MapDataset.source(source)
  opts = TransformOptions.from_config(data_cfg, train)
  if train:
    global_bs = batch_size * process_count
    if rows is None:
      rows = range(process_index * batch_size, (process_index + 1) * batch_size)
    if len(rows) != batch_size:
      raise ValueError(f"{len(rows)} rows for a per-host batch of {batch_size}")
    ds = ds.seed(seed).shuffle().repeat(num_epochs).random_map(LoadSample(opts), seed=_derived_seed(seed, 1))
    ds = HostRows(ds, rows, global_bs, start_batch)
    if len(ds) == 0:
      raise ValueError(f"the {split} split has {len(source)} records, fewer than one global batch of {global_bs}")
  else:
    ds = ds[process_index::process_count]
    if len(ds) == 0:
      raise ValueError(f"host {process_index}/{process_count} got no {split} records (the split has {len(source)})")
    ds = ds.seed(seed)
    if num_epochs not in (None, 1):
      ds = ds.repeat(num_epochs)
    ds = ds.random_map(LoadSample(opts), seed=_derived_seed(seed, process_index, 1))
  prefetch = max(1, int(data_cfg.prefetch or 1))
  workers = int(data_cfg.workers or 0)
  # to_iter_dataset drops the None results of skipped samples, before batching, so batches stay full.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=prefetch * batch_size))
  it_ds = it_ds.batch(batch_size, drop_remainder=train)
  if workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch))
  return it_ds
