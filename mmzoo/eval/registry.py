"""Evaluators chosen by name in a config.

An evaluator is a function `(task, params, mesh, split) -> dict[str, float]`. It asks
the task for predictions through a method named by the evaluator's contract
(for "lm": `task.lm_scores(params, mesh, split)`), so the same evaluator runs during
training and from a restored workdir (`launch/evaluate.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Evaluator = Callable[[Any, Any, Any, str], dict[str, float]]
_EVALUATORS: dict[str, Evaluator] = {}


def register(name: str) -> Callable[[Evaluator], Evaluator]:
  def decorate(fn: Evaluator) -> Evaluator:
    if name in _EVALUATORS:
      raise ValueError(f"evaluator {name!r} is already registered")
    _EVALUATORS[name] = fn
    return fn

  return decorate


def get(name: str) -> Evaluator:
  _import_builtin_evaluators()
  if name not in _EVALUATORS:
    raise ValueError(f"unknown evaluator {name!r}; known: {sorted(_EVALUATORS)}")
  return _EVALUATORS[name]


def run(names: Sequence[str], task: Any, params: Any, mesh: Any,
        split: str = "validation") -> dict[str, float]:
  """Runs the named evaluators and merges their results."""
  results: dict[str, float] = {}
  for name in names:
    results.update(get(name)(task, params, mesh, split))
  return results


def _import_builtin_evaluators() -> None:
  from mmzoo.eval import (
    arithmetic,  # noqa: F401  (registers "arithmetic")
    captions,  # noqa: F401  (registers "captions")
    classification,  # noqa: F401  (registers "accuracy")
    grounding,  # noqa: F401  (registers "grounding")
    lm,  # noqa: F401  (registers "lm")
    retrieval,  # noqa: F401  (registers "retrieval")
  )
