"""Language-model metrics: mean loss, bits per character, perplexity."""

from __future__ import annotations

import math

from mmzoo.eval import registry


def lm_metrics(nll_sum: float, count: float) -> dict[str, float]:
  """From the summed natural-log NLL of `count` predicted tokens.

  bpc = mean NLL / ln 2; perplexity = exp(mean NLL).
  """
  if count <= 0:
    raise ValueError("no tokens were scored")
  loss = nll_sum / count
  return {"loss": loss, "bpc": loss / math.log(2.0), "perplexity": math.exp(loss)}


@registry.register("lm")
def evaluate_lm(task, params, mesh, split: str) -> dict[str, float]:
  nll_sum, count = task.lm_scores(params, mesh, split)
  return lm_metrics(nll_sum, count)
