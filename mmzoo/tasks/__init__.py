"""Tasks: each binds a model, its loss, its data and its evaluators.

`build(config, artifacts)` picks the task named by `config.task`.
"""

from __future__ import annotations

import ml_collections


def build(config: ml_collections.ConfigDict, artifacts: dict | None = None, **kwargs):
  """The task for `config.task`, optionally with a checkpoint's artifacts."""
  if config.task == "char_lm":
    from mmzoo.tasks.char_lm import CharLMTask

    return CharLMTask(config, artifacts, **kwargs)
  if config.task == "retrieval":
    from mmzoo.tasks.retrieval import RetrievalTask

    return RetrievalTask(config, artifacts, **kwargs)
  if config.task == "captioning":
    from mmzoo.tasks.captioning import CaptioningTask

    return CaptioningTask(config, artifacts, **kwargs)
  raise ValueError(f"unknown task {config.task!r}")
