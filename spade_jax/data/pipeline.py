"""The grain input pipeline: source -> per-host shard -> shuffle/repeat -> decode -> drop bad -> batch.

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


def make_dataset(data_cfg, *, split: str, batch_size: int, seed: int, train: bool, process_index: int = 0,
                 process_count: int = 1, num_epochs: int | None = None, source=None) -> grain.IterDataset:
  """A grain IterDataset of numpy batches for this host.

  Training: each host takes an equal-length slice ``[process_index::process_count]`` (records beyond a
  multiple of process_count are left out so all hosts yield the same number of batches), shuffles it with
  `seed`, repeats `num_epochs` times (None = forever, reshuffled each epoch), random crop/flip per sample,
  and drops the last partial batch. Evaluation: same slicing without truncation, file order, no flip, one pass
  (or `num_epochs`), and keeps the last partial batch (hosts may then differ by one batch).

  Bad samples are dropped before batching in ``on_bad_sample='skip'`` mode, so batches stay full.
  `source` overrides `build_source(data_cfg, split)` (tests, or a caller that already built it).
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count={process_count})')
  source = build_source(data_cfg, split) if source is None else source
  ds = grain.MapDataset.source(source)
  if train and process_count > 1:
    ds = ds[: len(ds) - len(ds) % process_count]
  ds = ds[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f'host {process_index}/{process_count} got no {split} records (the split has {len(source)})')
  ds = ds.seed(seed)
  if train:
    ds = ds.shuffle().repeat(num_epochs)
  elif num_epochs not in (None, 1):
    ds = ds.repeat(num_epochs)
  opts = TransformOptions.from_config(data_cfg, train)
  ds = ds.random_map(LoadSample(opts), seed=_derived_seed(seed, process_index, 1))
  prefetch = max(1, int(data_cfg.get('prefetch', 2) or 1))
  workers = int(data_cfg.get('workers', 0) or 0)
  # to_iter_dataset drops the None results of skipped samples, before batching, so batches stay full.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=prefetch * batch_size))
  it_ds = it_ds.batch(batch_size, drop_remainder=train)
  if workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch))
  return it_ds
