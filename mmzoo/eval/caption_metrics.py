"""Caption metrics equal to coco-caption's: BLEU-1..4, ROUGE-L and CIDEr-D.

Each reproduces the scorer of coco-caption (pycocoevalcap 1.2; Chen et al. 2015,
arXiv:1504.00325) formula for formula, so the values agree with it on the same tokens:
BLEU and ROUGE-L bit for bit, CIDEr-D to ~1e-15 (its sums run in another order).

* `bleu`: Papineni et al. 2002, "BLEU: a Method for Automatic Evaluation of Machine
  Translation", as `bleu/bleu_scorer.py` computes it with option "closest": clipped n-gram
  counts against the per-n-gram maximum over the references; the brevity penalty uses,
  per image, the reference length closest to the candidate's (the shorter one on a tie),
  summed over the corpus; precisions are smoothed by +1e-15 over +1e-9. Per-image scores
  are the same formula on one image.
* `rouge_l`: Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries", as
  `rouge/rouge.py`: P = max over references of LCS / |candidate|, R = max of LCS /
  |reference| (each maximised on its own), F = (1 + b^2) P R / (R + b^2 P) with b = 1.2;
  tokens are split on single spaces. The corpus score is the mean over images.
* `cider_d` / `CiderD`: Vedantam et al. 2015, "CIDEr: Consensus-based Image Description
  Evaluation", in its CIDEr-D form as `cider/cider_scorer.py` computes it: tf-idf vectors
  of 1..4-grams, idf = log(#images) - log(max(1, df)) with df the number of images whose
  references contain the n-gram; per reference and n, sum_g min(v_c, v_r) v_r / (|v_c| |v_r|)
  (clipped), times exp(-d^2 / (2 sigma^2)) with sigma = 6 and d the difference of the two
  sentences' bigram counts (coco-caption counts bigrams where the paper counts words;
  the two differ only by one on each side); mean over n, mean over references, times 10.

Inputs are tokenized sentences: strings (split on whitespace, on single spaces for
ROUGE-L, as coco-caption does) or sequences of tokens (e.g. token ids), one candidate
per image and a non-empty list of references per image, aligned by position. Every
metric returns `(corpus_score, per_image_scores)`.

`CiderD` is the reusable form for self-critical sequence training (Rennie et al. 2017):
document frequencies computed once from a corpus (`CiderD.from_corpus`, e.g. the training
references), then `score(candidates, references)` per batch. BLEU and CIDEr-D count
n-grams for a whole batch at once with numpy sorts (`_Ngrams`), not per sentence.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Sentence = str | Sequence[Hashable]


def _words(sentence: Sentence) -> list:
  return sentence.split() if isinstance(sentence, str) else list(sentence)


def _sorted_unique(values: np.ndarray, counts: bool = False):
  """np.unique by sorting (numpy 2's hash-based default is much slower on int64 keys)."""
  values = np.sort(values)
  starts = np.flatnonzero(np.concatenate([[len(values) > 0], values[1:] != values[:-1]]))
  if not counts:
    return values[starts]
  return values[starts], np.diff(np.append(starts, len(values)))


class _Ngrams:
  """The n-grams of a batch of sentences, as integer arrays.

  Tokens become ids: those of `vocabulary`, which `grow` extends by the new ones, else
  numbers past it for this batch only. The n-grams of order k are
  numbered 0..kinds-1 in the sorted order of the pair (number of their (k-1)-gram prefix,
  id of their last token), so their keys never overflow, whatever the vocabulary size.
  """

  def __init__(self, sentences: list[list], vocabulary: dict[Hashable, int],
               grow: bool = True):
    flat = list(itertools.chain.from_iterable(sentences))
    # New tokens are numbered in order of first occurrence (dict.fromkeys keeps it).
    unknown = [t for t in dict.fromkeys(flat) if t not in vocabulary]
    offset = len(vocabulary)
    ids = vocabulary if grow else dict(vocabulary)
    ids.update(zip(unknown, range(offset, offset + len(unknown)), strict=True))
    self.tokens = np.fromiter(map(ids.__getitem__, flat), np.int64, len(flat))
    self.vocabulary_size = max(len(ids), 1)
    self.lengths = np.array([len(w) for w in sentences], np.int64)
    self.sentence_of = np.repeat(np.arange(len(sentences)), self.lengths)
    starts = np.cumsum(self.lengths) - self.lengths
    self.position = np.arange(len(flat), dtype=np.int64) - starts[self.sentence_of]
    self._orders: dict[int, list[tuple]] = {}
    self._by_list: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

  def orders(self, n: int) -> list[tuple]:
    """For k = 1..n (while any sentence is that long): kinds, then per kind its prefix's
    number at order k-1 (None for k = 1) and its last token, then per (sentence, kind)
    group: sentence, kind and count, sorted by sentence then kind. Computed once per n
    (BLEU and CIDEr-D of one batch share them)."""
    if n not in self._orders:
      self._orders[n] = list(self._count_orders(n))
    return self._orders[n]

  def references_by_list(self, k: int, order: tuple, images: int, ref_list: np.ndarray,
                         name: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference groups of order k + 1 (`order`, from `orders`; sentences from
    `images` on are references, sentence `images + r` in list `ref_list[r]`) sorted by
    (list, n-gram): their positions among the order's groups and their keys
    `list * kinds + kind`. Cached under `name`, which must stand for one `ref_list`
    (BLEU and CIDEr-D of a corpus share theirs)."""
    if (k, name) not in self._by_list:
      kinds, _, _, sentence, kind, _ = order
      groups = np.flatnonzero(sentence >= images)
      keys = ref_list[sentence[groups] - images] * kinds + kind[groups]
      by_key = np.argsort(keys)  # the order within a key does not matter
      self._by_list[k, name] = groups[by_key], keys[by_key]
    return self._by_list[k, name]

  def _count_orders(self, n: int):
    size = self.vocabulary_size
    ident = self.tokens  # each position's k-gram number
    kinds = size
    for k in range(1, n + 1):
      where = np.flatnonzero(self.position <= self.lengths[self.sentence_of] - k)
      if len(where) == 0:
        return
      if k == 1:
        prefix, last = None, np.arange(kinds)
      else:
        unique, inverse = np.unique(ident[where] * size + self.tokens[where + k - 1],
                                    return_inverse=True)
        kinds = len(unique)
        prefix, last = unique // size, unique % size
        ident = np.full(len(self.tokens), -1, np.int64)
        ident[where] = inverse
      groups, counts = _sorted_unique(self.sentence_of[where] * kinds + ident[where], counts=True)
      yield kinds, prefix, last, groups // kinds, groups % kinds, counts


def _find_rows(starts: np.ndarray, lasts: np.ndarray, parent: np.ndarray,
               last: np.ndarray) -> np.ndarray:
  """Rows (or -1) of n-grams (prefix row `parent`, `last` token) in a corpus table: a
  binary search of `last` among each parent's rows, all n-grams at once."""
  lo = starts[np.maximum(parent, 0)]
  hi = np.where(parent >= 0, starts[np.maximum(parent, 0) + 1], lo)  # none for parent -1
  end = hi.copy()
  top = max(len(lasts) - 1, 0)
  while True:
    active = lo < hi
    if not active.any():
      break
    mid = (lo + hi) >> 1
    right = active & (lasts[np.minimum(mid, top)] < last)
    lo = np.where(right, mid + 1, lo)
    hi = np.where(active & ~right, mid, hi)
  if len(lasts) == 0:
    return np.full(len(last), -1, np.int64)
  return np.where((lo < end) & (lasts[np.minimum(lo, top)] == last), lo, -1)


def _idf(pairs: np.ndarray, kinds: int, ref_len: float) -> np.ndarray:
  """coco-caption's idf, log(#images) - log(max(1, df)), of every n-gram kind, from the
  distinct (image, n-gram) keys `image * kinds + kind` of the corpus's references."""
  df = np.bincount(pairs % kinds, minlength=kinds).astype(np.float64)
  return ref_len - np.log(np.maximum(1.0, df))


def _check(candidates: Sequence[Any], references: Sequence[Sequence[Any]]) -> None:
  if len(candidates) != len(references):
    raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or len(refs) == 0:
      raise ValueError(f"image {i}: references must be a non-empty list of sentences")


def bleu(candidates: Sequence[Sentence], references: Sequence[Sequence[Sentence]],
         n: int = 4) -> tuple[list[float], list[list[float]]]:
  """Corpus BLEU-1..n and per-image BLEU-1..n, as coco-caption's `Bleu(n)`.

  Returns `([BLEU-1, ..., BLEU-n], [[BLEU-1 of each image], ..., [BLEU-n of each image]])`.
  The clipped counts are integers computed for the whole batch in numpy; the scores then
  follow coco-caption's arithmetic step by step, so they are the same floats.
  """
  _check(candidates, references)
  return _bleu(_Ngrams(_sentences(candidates, references), {}), references, n)


def _sentences(candidates: Sequence[Sentence],
               references: Sequence[Sequence[Sentence]]) -> list[list]:
  """The candidates' words, then every reference's, image by image."""
  return [_words(c) for c in candidates] + [_words(r) for refs in references for r in refs]


def _bleu(batch: _Ngrams, references: Sequence[Sequence[Sentence]],
          n: int) -> tuple[list[float], list[list[float]]]:
  """`bleu` given the n-grams of `_sentences(candidates, references)`."""
  images = len(references)
  owner = np.repeat(np.arange(images), [len(refs) for refs in references])
  testlen = batch.lengths[:images]
  # The reference length closest to the candidate's, the shorter on a tie.
  reflens = batch.lengths[images:]
  scale = int(batch.lengths.max(initial=0)) + 1
  closeness = np.abs(reflens - testlen[owner]) * scale + reflens
  starts = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]])) if images else []
  reflen = np.minimum.reduceat(closeness, starts) % scale if images else np.zeros(0, np.int64)
  correct = np.zeros((n, images), np.int64)
  for k, order in enumerate(batch.orders(n)):
    kinds, _, _, sentence, kind, count = order
    is_ref = sentence >= images
    # Per image and n-gram, its largest count in any reference...
    groups, keys = batch.references_by_list(k, order, images, owner, "image")
    ref_counts = count[groups]
    first = np.flatnonzero(np.concatenate([[len(keys) > 0], keys[1:] != keys[:-1]]))
    most = np.maximum.reduceat(ref_counts, first) if len(first) else ref_counts[:0]
    keys = keys[first]
    # ...clips the candidate's count.
    wanted = sentence[~is_ref] * kinds + kind[~is_ref]
    slot = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    hit = keys[slot] == wanted if len(keys) else np.zeros(len(wanted), bool)
    clipped = np.where(hit, np.minimum(count[~is_ref], most[slot] if len(keys) else 0), 0)
    correct[k] = np.bincount(sentence[~is_ref], clipped, minlength=images).astype(np.int64)
  small, tiny = 1e-9, 1e-15
  per_image: list[list[float]] = [[] for _ in range(n)]
  testlen, reflen, correct = testlen.tolist(), reflen.tolist(), correct.tolist()
  for i in range(images):
    score = 1.0
    for k in range(n):
      guess = max(0, testlen[i] - k)
      score *= (float(correct[k][i]) + tiny) / (float(guess) + small)
      per_image[k].append(score ** (1.0 / (k + 1)))
    ratio = (testlen[i] + tiny) / (reflen[i] + small)
    if ratio < 1:
      for k in range(n):
        per_image[k][-1] *= math.exp(1 - 1 / ratio)
  total_testlen, total_reflen = sum(testlen), sum(reflen)
  corpus = []
  score = 1.0
  for k in range(n):
    total_guess = sum(max(0, t - k) for t in testlen)
    score *= float(sum(correct[k]) + tiny) / (total_guess + small)
    corpus.append(score ** (1.0 / (k + 1)))
  ratio = (total_testlen + tiny) / (total_reflen + small)
  if ratio < 1:
    corpus = [b * math.exp(1 - 1 / ratio) for b in corpus]
  return corpus, per_image


def _lcs_length(masks: dict, full: int, m: int, other: Iterable) -> int:
  """Length of the longest common subsequence of a sequence of length m, given as
  {token: bitmask of its positions}, and `other` (Hyyro's bit-parallel algorithm)."""
  v = full
  for token in other:
    u = v & masks.get(token, 0)
    v = ((v + u) | (v - u)) & full
  return m - v.bit_count()


def rouge_l(candidates: Sequence[Sentence], references: Sequence[Sequence[Sentence]],
            beta: float = 1.2) -> tuple[float, list[float]]:
  """Corpus (mean) and per-image ROUGE-L F-scores, as coco-caption's `Rouge`."""
  _check(candidates, references)
  scores = []
  for candidate, refs in zip(candidates, references, strict=True):
    tokens = candidate.split(" ") if isinstance(candidate, str) else list(candidate)
    m = len(tokens)
    masks: dict = {}
    for i, t in enumerate(tokens):
      masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << m) - 1
    prec_max = rec_max = 0.0
    for ref in refs:
      ref_tokens = ref.split(" ") if isinstance(ref, str) else list(ref)
      lcs = _lcs_length(masks, full, m, ref_tokens)
      if m:
        prec_max = max(prec_max, lcs / float(m))
      if ref_tokens:
        rec_max = max(rec_max, lcs / float(len(ref_tokens)))
    if prec_max != 0 and rec_max != 0:
      scores.append(((1 + beta**2) * prec_max * rec_max) / float(rec_max + beta**2 * prec_max))
    else:
      scores.append(0.0)
  return float(np.mean(np.array(scores))), scores


class CiderD:
  """CIDEr-D with document frequencies fixed once, as coco-caption computes it.

  `CiderD.from_corpus(references)` takes the frequencies from a corpus of images; on the
  evaluated set's own references it gives coco-caption's `Cider` (that is `cider_d`).
  `score(candidates, references)` returns the per-image scores (coco-caption's x10 scale).

  The whole batch is scored at once in numpy: tokens become integer ids, an n-gram of
  order k the pair (number of its (k-1)-gram prefix, id of its last token), so n-grams of
  any vocabulary size are exact integer keys; counting, idf lookup, norms and the clipped
  dot products are sorts, binary searches and `bincount`. Summation order differs from
  coco-caption's dict order, so scores agree with it to ~1e-15, not bit for bit.
  """

  def __init__(self, vocabulary: dict[Hashable, int], starts: list[np.ndarray | None],
               lasts: list[np.ndarray | None], idf: list[np.ndarray], ref_len: float,
               n: int = 4, sigma: float = 6.0):
    """Use `from_corpus`. The corpus's n-grams of order k + 1 are rows of table k: row r
    of table 0 is token id r; rows of table k > 0 are grouped by their prefix's row in
    table k - 1 (rows starts[k][p] to starts[k][p + 1] - 1 for prefix p), sorted by their
    last token (lasts[k]). idf[k]: log(#images) - log(df) of each row."""
    self.n = n
    self.sigma = sigma
    self.ref_len = float(ref_len)
    self._vocabulary = vocabulary
    self._starts = starts
    self._lasts = lasts
    self._idf = idf

  @classmethod
  def from_corpus(cls, references: Mapping[Any, Sequence[Sentence]] | Sequence[Sequence[Sentence]],
                  n: int = 4, sigma: float = 6.0) -> CiderD:
    """Document frequencies (number of images whose references contain an n-gram) and
    ref_len = log(number of images) from the references of a corpus of images."""
    groups = list(references.values() if isinstance(references, Mapping) else references)
    if not groups:
      raise ValueError("the document-frequency corpus has no images")
    image_of = np.repeat(np.arange(len(groups)), [len(refs) for refs in groups])
    vocabulary: dict[Hashable, int] = {}
    batch = _Ngrams([_words(ref) for refs in groups for ref in refs], vocabulary)
    ref_len = float(np.log(float(len(groups))))
    starts: list[np.ndarray | None] = []
    lasts: list[np.ndarray | None] = []
    idf: list[np.ndarray] = []
    rows = 0
    for kinds, prefix, last, sentence, kind, _ in batch.orders(n):
      if prefix is None:
        starts.append(None)
        lasts.append(None)
      else:  # kinds come sorted by (prefix, last)
        starts.append(np.concatenate([[0], np.cumsum(np.bincount(prefix, minlength=rows))]))
        lasts.append(last)
      rows = kinds
      idf.append(_idf(_sorted_unique(image_of[sentence] * kinds + kind), kinds, ref_len))
    while len(idf) < n:  # no corpus sentence is that long
      starts.append(np.zeros(rows + 1, np.int64))
      lasts.append(np.zeros(0, np.int64))
      idf.append(np.zeros(0))
      rows = 0
    return cls(vocabulary, starts, lasts, idf, ref_len, n, sigma)

  def score(self, candidates: Sequence[Sentence],
            references: Sequence[Sequence[Sentence]]) -> np.ndarray:
    """Per-image CIDEr-D of each candidate against its references, <float64>[images].

    Candidates with equal reference lists (SCST's several samples per image) share the
    work on those references.
    """
    _check(candidates, references)
    images = len(candidates)
    # The distinct reference lists, and each candidate's.
    list_of: dict = {}
    distinct: list = []
    cand_list = np.empty(images, np.int64)
    for i, refs in enumerate(references):
      key = tuple(r if isinstance(r, str) else tuple(r) for r in refs)
      j = list_of.setdefault(key, len(distinct))
      if j == len(distinct):
        distinct.append(refs)
      cand_list[i] = j
    batch = _Ngrams(_sentences(candidates, distinct), self._vocabulary, grow=False)
    known = len(self._vocabulary)  # tokens past these ids are unknown to the corpus
    found = None

    def idf_of(k, order):
      # Each n-gram's row in the corpus table (or -1), and its idf.
      nonlocal found
      kinds, prefix, last = order[:3]
      if prefix is None:
        found = np.where(last < known, last, -1)
      else:
        found = _find_rows(self._starts[k], self._lasts[k], found[prefix], last)
      idf = np.full(kinds, self.ref_len)
      idf[found >= 0] = self._idf[k][found[found >= 0]]
      return idf

    return _cider(batch, images, cand_list, np.array([len(r) for r in distinct], np.int64),
                  idf_of, self.n, self.sigma)


def _cider(batch: _Ngrams, images: int, cand_list: np.ndarray, list_sizes: np.ndarray,
           idf_of: Callable, n: int, sigma: float, list_name: str = "list") -> np.ndarray:
  """Per-image CIDEr-D of the first `images` sentences of `batch` (the candidates)
  against reference lists: the rest of `batch`, list after list, `list_sizes[l]`
  sentences in list l; candidate i's list is `cand_list[i]`. `idf_of(k, order)`, given
  `_Ngrams.orders`'s entry of order k + 1, gives the idf of each n-gram kind.
  `list_name` names the lists for `references_by_list`."""
  list_start = np.cumsum(list_sizes) - list_sizes  # its first reference sentence
  ref_list = np.repeat(np.arange(len(list_sizes)), list_sizes)
  count = len(batch.lengths)
  # One (candidate, reference) pair per reference of each candidate, in order.
  pair_counts = list_sizes[cand_list]
  pair_start = np.cumsum(pair_counts) - pair_counts
  pair_cand = np.repeat(np.arange(images), pair_counts)
  pair_ref = (np.arange(len(pair_cand)) - pair_start[pair_cand]
              + list_start[cand_list][pair_cand])  # index among the reference sentences
  sums = np.zeros((len(pair_cand), n))  # per pair and order: sum_g min(w_c, w_r) w_r
  norms = np.zeros((count, n))
  for k, order in enumerate(batch.orders(n)):
    kinds, _, _, sentence, kind, tf = order
    idf = idf_of(k, order)
    weight = tf.astype(np.float64) * idf[kind]
    norms[:, k] = np.sqrt(np.bincount(sentence, weight * weight, minlength=count))
    # Clipped dot products: each candidate n-gram meets the same n-gram in every
    # reference of its list.
    cand_groups = np.flatnonzero(sentence < images)
    sorted_groups, ref_keys = batch.references_by_list(k, order, images, ref_list, list_name)
    wanted = cand_list[sentence[cand_groups]] * kinds + kind[cand_groups]
    lo = np.searchsorted(ref_keys, wanted, "left")
    hits = np.searchsorted(ref_keys, wanted, "right") - lo
    total = int(hits.sum())
    if total == 0:
      continue
    cand_group = np.repeat(cand_groups, hits)
    ref_group = sorted_groups[np.arange(total) + np.repeat(lo - (np.cumsum(hits) - hits), hits)]
    cand = sentence[cand_group]
    pair = (pair_start[cand] + sentence[ref_group] - images
            - list_start[cand_list[cand]])
    w_cand, w_ref = weight[cand_group], weight[ref_group]
    sums[:, k] = np.bincount(pair, np.minimum(w_cand, w_ref) * w_ref, minlength=len(sums))
  cand_norms, ref_norms = norms[pair_cand], norms[images + pair_ref]
  both = (cand_norms != 0) & (ref_norms != 0)
  values = np.where(both, sums / np.where(both, cand_norms * ref_norms, 1.0), sums)
  # coco-caption's length: the number of bigrams.
  bigrams = np.maximum(batch.lengths - 1, 0) if n > 1 else np.zeros(count, np.int64)
  delta = (bigrams[pair_cand] - bigrams[images + pair_ref]).astype(np.float64)
  values = values * (math.e ** (-(delta**2) / (2 * sigma**2)))[:, None]
  per_order = [np.bincount(pair_cand, values[:, k], minlength=images) for k in range(n)]
  total = per_order[0].copy()
  for k in range(1, n):  # coco-caption's mean over the orders: a left-to-right sum
    total += per_order[k]
  return total / n / np.maximum(pair_counts, 1) * 10.0


def cider_d(candidates: Sequence[Sentence], references: Sequence[Sequence[Sentence]],
            n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
  """Corpus (mean) and per-image CIDEr-D, as coco-caption's `Cider`: document
  frequencies from these references, ref_len = log(number of images)."""
  _check(candidates, references)
  scores = _cider_own_df(_Ngrams(_sentences(candidates, references), {}), references, n, sigma)
  return float(np.mean(scores)), scores.tolist()


def _cider_own_df(batch: _Ngrams, references: Sequence[Sequence[Sentence]], n: int,
                  sigma: float) -> np.ndarray:
  """`cider_d`'s per-image scores given the n-grams of `_sentences(candidates, references)`:
  the document frequencies come from the same n-grams (the reference sentences'), whose
  keys (image, n-gram), sorted by `references_by_list`, serve the dot products too."""
  images = len(references)
  if images == 0:
    raise ValueError("the document-frequency corpus has no images")
  sizes = np.array([len(refs) for refs in references], np.int64)
  owner = np.repeat(np.arange(images), sizes)
  ref_len = float(np.log(float(images)))

  def idf_of(k, order):
    _, keys = batch.references_by_list(k, order, images, owner, "image")  # sorted
    distinct = keys[np.concatenate([[len(keys) > 0], keys[1:] != keys[:-1]])]
    return _idf(distinct, order[0], ref_len)

  # One list per image, the images' own references: the lists are BLEU's "image"s.
  return _cider(batch, images, np.arange(images), sizes, idf_of, n, sigma, "image")


def coco_scores(candidates: Sequence[Sentence], references: Sequence[Sequence[Sentence]]
                ) -> dict[str, tuple[float, list[float]]]:
  """coco-caption's BLEU-1..4, ROUGE-L and CIDEr-D: `{name: (corpus, per_image)}` under
  its names (`Bleu_1` .. `Bleu_4`, `ROUGE_L`, `CIDEr`). BLEU and CIDEr-D share one
  n-gram count of the sentences (`bleu`, `rouge_l` and `cider_d` give the same values)."""
  _check(candidates, references)
  batch = _Ngrams(_sentences(candidates, references), {})
  corpus_bleu, image_bleu = _bleu(batch, references, 4)
  out = {f"Bleu_{k + 1}": (corpus_bleu[k], image_bleu[k]) for k in range(4)}
  out["ROUGE_L"] = rouge_l(candidates, references)
  cider = _cider_own_df(batch, references, 4, 6.0)
  out["CIDEr"] = (float(np.mean(cider)), cider.tolist())
  return out
