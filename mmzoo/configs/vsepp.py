r"""VSE++: the hinge loss on the hardest negative of each query (Faghri et al. 2018).

  python launch/retrieval.py --config=mmzoo/configs/vsepp.py --workdir=workdirs/vsepp

Variants (see mmzoo/configs/retrieval.py): smoke, bow, mean, precomp.
"""

from mmzoo.configs import retrieval


def get_config(arg=None):
  return retrieval.get_config(arg, max_violation=True, space="cosine")
