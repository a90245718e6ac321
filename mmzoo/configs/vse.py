r"""VSE: the bidirectional hinge loss summed over all negatives (Kiros et al. 2014).

  python launch/retrieval.py --config=mmzoo/configs/vse.py --workdir=workdirs/vse

Variants (see mmzoo/configs/retrieval.py): smoke, bow, mean, precomp.
"""

from mmzoo.configs import retrieval


def get_config(arg=None):
  return retrieval.get_config(arg, max_violation=False, space="cosine")
