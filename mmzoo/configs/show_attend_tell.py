r"""Show, Attend and Tell with soft attention (Xu et al. 2015).

  python launch/captioning.py --config=mmzoo/configs/show_attend_tell.py \
      --workdir=workdirs/show_attend_tell
  python launch/captioning.py --config=mmzoo/configs/show_attend_tell.py:scst \
      --config.train.init_from=workdirs/show_attend_tell --workdir=workdirs/show_attend_tell_scst

Variants (see mmzoo/configs/captioning.py): smoke, scst.
"""

from mmzoo.configs import captioning


def get_config(arg=None):
  return captioning.get_config(arg, model="show_attend_tell")
