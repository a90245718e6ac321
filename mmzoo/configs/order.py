r"""Order embeddings: non-negative embeddings ranked by order violation (Vendrov et al. 2016).

  python launch/retrieval.py --config=mmzoo/configs/order.py --workdir=workdirs/order

Variants (see mmzoo/configs/retrieval.py): smoke, bow, mean, precomp.
"""

from mmzoo.configs import retrieval


def get_config(arg=None):
  return retrieval.get_config(arg, max_violation=False, space="order")
