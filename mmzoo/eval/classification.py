"""Classification accuracy (e.g. VQA answers as classes), from counts pooled over a split."""

from __future__ import annotations

import numpy as np

from mmzoo.eval import registry


def accuracy(predictions, labels, mask=None) -> tuple[float, float]:
  """`(correct, count)` of `predictions == labels` over `mask` (all by default).

  Counts rather than a mean, so that batches and processes pool exactly.
  """
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape:
    raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ")
  mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
  return float(np.sum((predictions == labels) & mask)), float(np.sum(mask))


@registry.register("accuracy")
def evaluate_accuracy(task, params, mesh, split: str) -> dict[str, float]:
  """The "accuracy" evaluator: `task.classification_counts(params, mesh, split)` gives
  `(correct, count)`; returns `{"accuracy": percent, "count": count}`."""
  correct, count = task.classification_counts(params, mesh, split)
  if count <= 0:
    raise ValueError("no examples were classified")
  return {"accuracy": 100.0 * correct / count, "count": float(count)}
