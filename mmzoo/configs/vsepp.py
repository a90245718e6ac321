r"""VSE++: the hinge loss on the hardest negative of each query (Faghri et al. 2018).

  python launch/retrieval.py --config=mmzoo/configs/vsepp.py --workdir=workdirs/vsepp

On shapes, where the image CNN starts from random weights, the first 2000 of the
3000 steps sum the hinges over all negatives (VSE's loss), and the hardest negatives
then train at a tenfold lower learning rate, as VSE++ drops its rate tenfold partway.
From random weights, or at the full rate, the hardest negatives pull every caption
into one cone (loss stuck at twice the margin). With pretrained features (`precomp`)
it trains on hardest negatives from the start, as the paper does.

Variants (see mmzoo/configs/retrieval.py): smoke, bow, mean, precomp.
"""

from mmzoo.configs import retrieval


def get_config(arg=None):
  return retrieval.get_config(arg, max_violation=True, space="cosine")
