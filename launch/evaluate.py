r"""Evaluates a trained workdir, rebuilding config, vocabulary and params from it alone.

  python launch/evaluate.py --workdir=W [--split=validation] [--step=N] [--checkpoint=best|latest]
  python launch/evaluate.py --workdir=W --beam_size=3          # captioning: beam search
  python launch/evaluate.py --workdir=W --temperature=0.7 --top_p=0.9   # captioning: sampling

Prints one JSON object of the task's metrics and writes it to
W/eval/<split>_step<N>.json.
"""

import json
import os

import common
import jax
from absl import flags

from mmzoo import tasks
from mmzoo.train import loop, parallel

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_SPLIT = flags.DEFINE_string("split", "validation", "Which split to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest or best.")
_CHECKPOINT = common.checkpoint_flag()


_DECODING = common.decoding_flags()


_SUBSET = flags.DEFINE_enum("subset", None, ["all", "relations"],
                            "Captioning on shapes: evaluate only images with relations.")


def main(argv):
  del argv
  common.initialize_distributed()
  overrides = _DECODING()
  if _SUBSET.value is not None:
    overrides["eval.subset"] = _SUBSET.value
  task, params, step = loop.restore_workdir(_WORKDIR.value, tasks.build, _STEP.value,
                                            _CHECKPOINT.value, overrides)
  results = task.evaluate(params, parallel.make_mesh(), _SPLIT.value)
  results = {"step": step, "split": _SPLIT.value, **results}
  if jax.process_index() == 0:
    out_dir = os.path.join(_WORKDIR.value, "eval")
    os.makedirs(out_dir, exist_ok=True)
    name = f"{_SPLIT.value}_step{step}" + (f"_{_SUBSET.value}" if _SUBSET.value else "")
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
      json.dump(results, f, indent=2)
    if hasattr(task, "write_predictions"):  # Captioning: COCO results format.
      path = os.path.join(out_dir, f"{name}_predictions.json")
      task.write_predictions(path)
      results["predictions"] = path
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
  common.run(main)
