"""Multimodal linguistic regularities (Kiros et al. 2014): image - word + word.

The "arithmetic" evaluator asks the task for `arithmetic_accuracy(params, split)`:
on the shapes world, image - colour + colour' should retrieve images of colour'.
"""

from __future__ import annotations

from mmzoo.eval import registry


@registry.register("arithmetic")
def evaluate_arithmetic(task, params, mesh, split: str) -> dict[str, float]:
  del mesh
  return task.arithmetic_accuracy(params, split)
