"""What the multimodal tasks share: encoder options, trainable masks, record helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mmzoo.data import pipeline
from mmzoo.train import parallel


def encoder_kwargs(model: ml_collections.ConfigDict) -> tuple:
  """The options of `model.encoder` from a model config, as (name, value) pairs."""
  if model.encoder == "small_cnn":
    return (("features", tuple(model.cnn_features)), ("strides", tuple(model.cnn_strides)))
  if model.encoder.startswith("resnet"):
    return (("num_stages", model.resnet_stages),)
  return ()


def trainable(params: Any, frozen_encoder: bool) -> Any:
  """Everything but BatchNorm statistics (and a frozen image encoder's weights).

  `params` is a model's whole variables dict ({"params", "batch_stats"}); the
  statistics change only through the training-mode replacement of the loss.
  """

  def leaf_trainable(path, _):
    names = [getattr(p, "key", "") for p in path]
    if names[0] != "params":
      return False
    return not (frozen_encoder and len(names) > 1 and names[1] == "image_encoder")

  return jax.tree_util.tree_map_with_path(leaf_trainable, params)


def text(value: Any) -> str:
  """A record's text field (bytes from TFDS) as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Subset:
  """The records of a source at the given indices."""

  def __init__(self, source, indices):
    self.source, self.indices = source, list(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[self.indices[index]]


def map_split(source: Sequence, transform: pipeline.Transform, batch_size: int, mesh,
              fn: Callable[[dict], Any]) -> np.ndarray:
  """`fn` over every element of `source`, in order: `[len(source), ...]` on every process.

  `batch_size` is global; each process reads its own shard (`pipeline.eval_batches`),
  `fn` gets the global batch, and the results of all processes are gathered and put
  back in `source` order (padding rows dropped).
  """
  parallel.check_batch_size(batch_size, "eval.batch_size")
  rows, index, mask = [], [], []
  for batch in pipeline.eval_batches(source, transform, batch_size // jax.process_count()):
    meta = {"index": batch.pop("index"), "mask": batch.pop("mask")}
    gathered = parallel.to_host({"out": fn(parallel.global_batch(batch, mesh)),
                                 **parallel.global_batch(meta, mesh)})
    rows.append(gathered["out"])
    index.append(gathered["index"])
    mask.append(gathered["mask"])
  rows, index, keep = np.concatenate(rows), np.concatenate(index), np.concatenate(mask) > 0
  out = np.zeros((len(source),) + rows.shape[1:], rows.dtype)
  out[index[keep]] = rows[keep]
  return out
