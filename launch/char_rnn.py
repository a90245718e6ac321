r"""Trains a character-level language model (min-char-rnn / char-rnn).

  python launch/char_rnn.py --config=mmzoo/configs/char_rnn.py[:gru|rnn|smoke] \
      --workdir=workdirs/char_rnn [--config.data.path=input.txt]

Re-running the same command on the same workdir resumes from its latest
checkpoint. On a CPU host, LSTM and GRU layers that the fused CPU kernels run
train on one device on all cores; other models (the vanilla RNN, hidden sizes
not a multiple of 64) split the batch over one single-threaded XLA device per
core (--cpu_devices=auto; --cpu_devices=N forces N devices, 0 one).
Multi-host: add --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on every process.
"""

import common
from absl import flags
from ml_collections import config_flags

from mmzoo.tasks import char_lm

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.",
                               required=True)


def main(argv):
  del argv
  common.train(_CONFIG.value, _WORKDIR.value, lambda task: (
      f"corpus: {task.corpus_name}, {len(task.train_ids)} training and "
      f"{len(task.validation_ids)} validation characters, vocabulary of {task.vocab.size}"))


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  common.run(main, batch_sizes=lambda: char_lm.cpu_split_batch_sizes(_CONFIG.value))
