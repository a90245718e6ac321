r"""Show and Tell (Vinyals et al. 2015); `rnn`: the lectures' image-in-every-step RNN.

  python launch/captioning.py --config=mmzoo/configs/show_tell.py --workdir=workdirs/show_tell
  python launch/captioning.py --config=mmzoo/configs/show_tell.py:scst \
      --config.train.init_from=workdirs/show_tell --workdir=workdirs/show_tell_scst

Variants (see mmzoo/configs/captioning.py): smoke, scst, rnn.
"""

from mmzoo.configs import captioning


def get_config(arg=None):
  return captioning.get_config(arg, model="show_tell")
