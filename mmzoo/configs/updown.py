r"""Bottom-Up and Top-Down attention (Anderson et al. 2018).

  python launch/captioning.py --config=mmzoo/configs/updown.py --workdir=workdirs/updown
  python launch/captioning.py --config=mmzoo/configs/updown.py:scst \
      --config.train.init_from=workdirs/updown --workdir=workdirs/updown_scst

Variants (see mmzoo/configs/captioning.py): smoke, scst.
"""

from mmzoo.configs import captioning


def get_config(arg=None):
  return captioning.get_config(arg, model="updown")
