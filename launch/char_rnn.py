r"""Trains a character-level language model (min-char-rnn / char-rnn).

  python launch/char_rnn.py --config=mmzoo/configs/char_rnn.py[:gru|rnn|smoke] \
      --workdir=workdirs/char_rnn [--config.data.path=input.txt]

Re-running the same command on the same workdir resumes from its latest
checkpoint. Multi-host: add --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on every process.
"""

import json

import common
from absl import flags, logging
from ml_collections import config_flags

from mmzoo import tasks
from mmzoo.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.",
                               required=True)


def main(argv):
  del argv
  common.initialize_distributed()
  task = tasks.build(_CONFIG.value)
  logging.info("corpus: %s, %d training and %d validation characters, vocabulary of %d",
               task.corpus_name, len(task.train_ids), len(task.validation_ids), task.vocab.size)
  results = loop.train_and_evaluate(task, _WORKDIR.value)
  print(json.dumps({"validation": results}), flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  common.run(main)
