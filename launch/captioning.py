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

import common
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.",
                               required=True)


def main(argv):
  del argv
  common.train(_CONFIG.value, _WORKDIR.value, common.describe_captioned_images)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  common.run(main)
