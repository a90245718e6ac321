"""grain input pipelines over TFDS data sources.

    source (random access) -> this process's shard -> seeded shuffle, per epoch
      -> transform (decode, augment, tokenize, pad; seeded per element) -> batch

Training pipelines repeat and reshuffle every epoch; each process reads only its
own shard (`source[process_index::process_count]`), so the shards are disjoint
and together complete. The iterator's state (`get_state` / `set_state`) is how
many batches it has produced, the same on every process, so a checkpoint holds
one copy and a resumed run sees exactly the batches an uninterrupted run would.

Evaluation pipelines read each example once, in order, and pad the last batch
to full size with `mask` = 0, giving every process the same number of batches
(collectives in an evaluation step need every process to take part).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from mmzoo.data import images, tokenizers

Transform = Callable[[dict, np.random.Generator | None], dict]


def data_source(builder: tfds.core.DatasetBuilder, split: str):
  """Random access to a built split (`builders.prepare` builds it first).

  Images come back encoded (bytes): the transforms decode them with
  `images.pixels`, which is about twice as fast as TFDS's own decoding and
  names a record whose image fails to decode.
  """
  if split not in builder.info.splits:
    from mmzoo.errors import InputError

    raise InputError(f"{builder.data_dir}: has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}")
  decoders = {"image": tfds.decode.SkipDecoding()} if "image" in builder.info.features else None
  return builder.as_data_source(split=split, decoders=decoders)


class CaptionPairs:
  """One element per (image, caption): `len(source) * k` elements, k captions per image.

  Element i is image i // k with its caption i % k (counted modulo the image's
  own number of captions), the layout of vsepp and of the retrieval metrics.
  """

  def __init__(self, source: Sequence, captions_per_image: int = 5):
    self.source = source
    self.k = captions_per_image

  def __len__(self) -> int:
    return len(self.source) * self.k

  def __getitem__(self, index: int) -> dict:
    record = dict(self.source[index // self.k])
    captions = record["captions"]
    record["caption"] = captions[(index % self.k) % len(captions)]
    record["caption_index"] = index % self.k
    record["image_index"] = index // self.k
    return record


def _collate(examples: Sequence[dict]) -> dict:
  """Stacks numeric fields into arrays; anything else (text) stays a list."""
  out = {}
  for key in examples[0]:
    values = [e[key] for e in examples]
    first = values[0]
    if isinstance(first, np.ndarray | np.number | int | float | bool) and not isinstance(
        first, str | bytes):
      out[key] = np.stack([np.asarray(v) for v in values])
    else:
      out[key] = values
  return out


def _shard(ds: grain.MapDataset, process_index: int | None,
           process_count: int | None) -> grain.MapDataset:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return ds[index::count]


def train_batches(source: Sequence, transform: Transform, batch_size: int, seed: int, *,
                  num_epochs: int | None = None, process_index: int | None = None,
                  process_count: int | None = None, read_threads: int = 1,
                  prefetch: int = 4) -> grain.DatasetIterator:
  """An endless (or `num_epochs`) iterator of this process's shuffled training batches.

  `batch_size` is per process. `transform(record, rng)` gets a generator seeded
  from (seed, element position), so augmentation is reproducible too.
  """
  ds = grain.MapDataset.source(source)
  ds = _shard(ds, process_index, process_count)
  ds = ds.shuffle(seed=seed).repeat(num_epochs)
  ds = ds.random_map(transform, seed=seed + 1)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_collate)
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


class Counted:
  """Adds `step`, the number of batches drawn before this one, to every batch.

  For losses that change with training progress (scheduled sampling, a loss
  warm-up): the step travels in the batch, one copy per example. The state is
  the wrapped iterator's, whose `next_index` counts batches.
  """

  def __init__(self, batches: grain.DatasetIterator):
    self.batches = batches
    self.count = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self.batches)
    size = len(next(v for v in batch.values() if isinstance(v, np.ndarray)))
    batch["step"] = np.full(size, self.count, np.int32)
    self.count += 1
    return batch

  def get_state(self) -> dict:
    return self.batches.get_state()

  def set_state(self, state: dict) -> None:
    self.batches.set_state(state)
    self.count = int(state["next_index"])


def eval_batches(source: Sequence, transform: Transform, batch_size: int, *,
                 process_index: int | None = None, process_count: int | None = None,
                 read_threads: int = 1) -> grain.DatasetIterator:
  """Every example of this process's shard once, in order, in full batches with `mask`.

  Each process yields ceil(ceil(N / processes) / batch_size) batches; padding
  rows repeat the last real example and have mask 0. `index` holds each row's
  position in `source`, so results gathered from every process can be put back
  in order.
  """
  count = jax.process_count() if process_count is None else process_count
  per_process = math.ceil(len(source) / count)
  num_batches = math.ceil(per_process / batch_size)
  shard = _shard(grain.MapDataset.source(source), process_index, process_count)
  real = len(shard)
  if real == 0:
    raise ValueError("an evaluation shard is empty: fewer examples than processes")

  index = jax.process_index() if process_index is None else process_index

  def padded(i: int) -> dict:
    example = dict(transform(shard[min(i, real - 1)], None))
    example["mask"] = np.float32(i < real)
    example["index"] = np.int64(index + min(i, real - 1) * count)  # position in `source`
    return example

  ds = grain.MapDataset.range(num_batches * batch_size).map(padded)
  ds = ds.batch(batch_size, batch_fn=_collate)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads)))


def caption_transform(tokenizer: tokenizers.Tokenizer, max_len: int, *, train: bool,
                      crop_size: int | None = None, flip: bool = False,
                      with_references: bool = False) -> Transform:
  """Record with `image` and `caption` (or `captions`) -> model inputs.

  Output: `image` <uint8>[S, S, 3]; `tokens` <int32>[max_len + 1] = bos, caption,
  eos, padding (truncated to fit); `length` = the number of predicted tokens
  (caption + eos). At train time an image with several captions and no chosen
  `caption` gets one drawn at random. `with_references` adds the decoded
  reference captions (text, kept on the host) for evaluation.
  """

  def transform(record: dict, rng: np.random.Generator | None) -> dict:
    pixels = images.pixels(record["image"])
    if train and rng is not None:
      pixels = images.augment(pixels, rng, crop_size, flip)
    else:
      pixels = images.center_crop(pixels, crop_size)
    captions = [c.decode("utf-8") if isinstance(c, bytes) else c for c in record["captions"]]
    caption = record.get("caption")
    if caption is None:
      caption = captions[int(rng.integers(len(captions)))] if rng is not None else captions[0]
    elif isinstance(caption, bytes):
      caption = caption.decode("utf-8")
    ids = tokenizer.encode(caption, add_bos=True, add_eos=True)
    tokens, length = tokenizers.pad([ids], max_len + 1)
    out = {"image": pixels, "tokens": tokens[0], "length": np.int32(length[0] - 1)}
    if with_references:
      out["references"] = captions
      out["image_id"] = _text(record.get("image_id", ""))
    return out

  return transform


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
