r"""Trains an image captioner (Show and Tell, Show Attend and Tell, UpDown).

  python launch/captioning.py --config=mmzoo/configs/show_attend_tell.py --workdir=W
  python launch/captioning.py --config=mmzoo/configs/show_attend_tell.py:scst \
      --config.train.init_from=W --workdir=W_scst

Trains on the built-in shapes world by default (built on first use); set
--config.data.source=karpathy --config.data.name=... for a dataset built by
launch/prepare_data.py (and --config.data.features_dir for precomputed
features). Re-running resumes; the checkpoint with the best validation CIDEr-D
is kept under W/best. Multi-host: add
--coordinator_address=HOST:PORT --num_processes=N --process_id=I on every process.
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
  logging.info("data: %s, %s images per split, vocabulary of %d",
               task.config.data.source, {s: len(v) for s, v in task.splits.items()},
               task.tokenizer.vocab_size)
  results = loop.train_and_evaluate(task, _WORKDIR.value)
  print(json.dumps({"validation": results}), flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  common.run(main)
