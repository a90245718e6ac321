"""Metrics as (sum, count) pairs, and their writers (JSONL + TensorBoard).

Per-batch metrics travel as `(sum, count)` so that padded or uneven batches
never bias a mean; they are divided once, after aggregation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

Metrics = dict[str, tuple[Any, Any]]


def accumulate(total: Metrics | None, new: Metrics) -> Metrics:
  if total is None:
    return new
  return jax.tree.map(lambda a, b: a + b, total, new)


def normalize(total: Metrics) -> dict[str, float]:
  """Divides each sum by its count, on the host."""
  out = {}
  for name, (s, c) in jax.device_get(total).items():
    c = float(np.asarray(c))
    out[name] = float(np.asarray(s)) / c if c else float("nan")
  return out


class MetricWriter:
  """Appends metrics to `workdir/metrics.jsonl` and TensorBoard event files.

  Only process 0 writes; on other processes every call is a no-op.
  """

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      from tensorboardX import SummaryWriter  # Imported lazily: only process 0 writes.

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(f"{split}/{name}", float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
