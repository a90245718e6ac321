r"""Samples text from a trained character-level language model.

  python launch/sample.py --workdir=W --prime="def " --length=500 --temperature=0.8 \
      [--top_k=0] [--seed=0]
"""

import functools

import common
from absl import flags

from mmzoo import tasks
from mmzoo.train import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_PRIME = flags.DEFINE_string("prime", "", "Priming text; empty starts from a random character.")
_LENGTH = flags.DEFINE_integer("length", 500, "Characters to sample after the prime.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely; 0 for all.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv):
  del argv
  build = functools.partial(tasks.build, load_data=False)  # Sampling needs only the vocab.
  task, params, _ = loop.restore_workdir(_WORKDIR.value, build)
  print(task.sample(params, _PRIME.value, _LENGTH.value, _TEMPERATURE.value, _TOP_K.value,
                    _SEED.value))


if __name__ == "__main__":
  common.run(main)
