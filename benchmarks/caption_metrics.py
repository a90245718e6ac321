r"""Caption-metric speed: mmzoo's Java-free metrics vs pycocoevalcap's scorers.

Two workloads, both sides on the same tokens in the same run. Each time is the median of
`--repeats` runs, in wall-clock and in CPU milliseconds of this process and its children
(the Java tokenizer); CPU time is less disturbed by other load on a shared machine, whose
load average is printed:

* SCST reward: per-image CIDEr-D of a batch of `--batch` sampled captions, 5 references
  each, with document frequencies fixed once from a training corpus of `--corpus_images`
  images (`CiderD.from_corpus`), as self-critical training uses it: every caption of its
  own image, `--samples_per_image` captions per image (as SCST samples them), and a batch
  a fifth the size. pycocoevalcap's `Cider` cannot fix document frequencies; its row
  scores the same pairs with frequencies from the batch, the same work per pair.
* Corpus evaluation: BLEU-1..4 + ROUGE-L + CIDEr-D over `--eval_images` images with 5
  references each, and (with `--tokenize`) the PTB tokenization of all their captions,
  pycocoevalcap's side being its Java PTBTokenizer (one JVM run, so measured once).

The captions are synthetic (a Zipf-distributed vocabulary of 2000 words, 8-16 words per
caption; for the tokenizer capitalized, with a final period and some commas and "'s"),
which gives COCO-like n-gram statistics. The agreement of the two sides'
scores is printed as well.

  python benchmarks/caption_metrics.py                 # ~1-2 minutes on 2 cores
  python benchmarks/caption_metrics.py --repeats=3 --eval_images=1000 --notokenize
"""

from __future__ import annotations

import os
import platform
import random
import resource
import shutil
import statistics
import time

import numpy as np
from absl import app, flags

from mmzoo.eval import caption_metrics, ptb_tokenizer

BATCH = flags.DEFINE_integer("batch", 500, "Candidate captions per SCST batch.")
SAMPLES = flags.DEFINE_integer("samples_per_image", 5, "SCST samples per image (shared refs).")
CORPUS = flags.DEFINE_integer("corpus_images", 20000, "Images of the document-frequency corpus.")
EVAL_IMAGES = flags.DEFINE_integer("eval_images", 5000, "Images of the corpus evaluation.")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median counts.")
TOKENIZE = flags.DEFINE_bool("tokenize", True, "Also time PTB tokenization (Java peer: once).")

try:
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
except ImportError:  # pragma: no cover - depends on the environment
  Bleu = Cider = Rouge = None


class _Captions:
  """Synthetic captions with COCO-like word statistics."""

  def __init__(self, seed: int = 0, vocab: int = 2000):
    self.rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    self.words = ["q" + letters[i // 676 % 26] + letters[i // 26 % 26] + letters[i % 26]
                  for i in range(vocab)]
    weights = [1.0 / (i + 1) for i in range(vocab)]
    total = sum(weights)
    self.cumulative = np.cumsum([w / total for w in weights]).tolist()

  def sentence(self) -> str:
    n = self.rng.randint(8, 16)
    picks = np.searchsorted(self.cumulative, [self.rng.random() for _ in range(n)])
    return " ".join(self.words[min(int(i), len(self.words) - 1)] for i in picks)

  def raw(self) -> str:
    """An untokenized caption: capitalized, sometimes a comma or a possessive, a period."""
    words = self.sentence().split()
    if self.rng.random() < 0.2:
      words[len(words) // 2] += ","
    if self.rng.random() < 0.1:
      words[1] += "'s"
    text = " ".join(words)
    return text[:1].upper() + text[1:] + "."


def _cpu_seconds() -> float:
  """CPU time of this process and of its finished children (pycocoevalcap's Java runs)."""
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _median_ms(fn, repeats: int) -> tuple[float, float]:
  """Median wall-clock and median CPU (this process) milliseconds of `fn()`."""
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    cpus.append((_cpu_seconds() - cpu) * 1e3)
    walls.append((time.perf_counter() - wall) * 1e3)
  return statistics.median(walls), statistics.median(cpus)


def _header() -> None:
  print("| workload                                       | mmzoo wall | mmzoo cpu | "
        "pycoco wall | pycoco cpu | speedup (cpu) |")
  print("|------------------------------------------------|-----------:|----------:|"
        "------------:|-----------:|--------------:|")


def _row(name: str, ours: tuple[float, float], peer: tuple[float, float] | None,
         per: str = "") -> None:
  peer_text = f"{peer[0]:11.1f} | {peer[1]:10.1f}" if peer else f"{'-':>11} | {'-':>10}"
  speedup = f"{peer[1] / ours[1]:12.1f}x" if peer else f"{'-':>13}"
  print(f"| {name:<46} | {ours[0]:10.1f} | {ours[1]:9.1f} | {peer_text} | {speedup} | {per}")


def main(argv):
  del argv
  gen = _Captions()
  print(f"cpus: {os.cpu_count()}  load average: {os.getloadavg()[0]:.1f}  python: "
        f"{platform.python_version()}  numpy: {np.__version__}  machine: {platform.machine()}")
  if Cider is None:
    print("pycocoevalcap is not installed (pip install pycocoevalcap==1.2): peer rows skipped")
  repeats = REPEATS.value

  # SCST reward with fixed document frequencies.
  corpus = [[gen.sentence() for _ in range(5)] for _ in range(CORPUS.value)]
  start = time.perf_counter()
  scorer = caption_metrics.CiderD.from_corpus(corpus)
  df_seconds = time.perf_counter() - start
  batch = BATCH.value
  distinct_refs = corpus[:batch]
  candidates = [gen.sentence() for _ in range(batch)]
  images = max(1, batch // SAMPLES.value)
  shared_refs = [corpus[i // SAMPLES.value] for i in range(images * SAMPLES.value)]
  shared_candidates = candidates[:len(shared_refs)]
  small = max(1, batch // 5)

  def peer_cider():
    gts = {i: refs for i, refs in enumerate(distinct_refs)}
    res = {i: [c] for i, c in enumerate(candidates)}
    return Cider().compute_score(gts, res)

  peer = _median_ms(peer_cider, repeats) if Cider is not None else None
  print(f"\nSCST reward, {batch} captions x 5 references, document frequencies of "
        f"{CORPUS.value} images (built once in {df_seconds:.1f} s); ms per batch:")
  _header()
  ours = _median_ms(lambda: scorer.score(candidates, distinct_refs), repeats)
  _row(f"CIDEr-D, {batch} captions of {batch} images", ours, peer,
       f"{ours[1] / batch * 100:.2f} cpu ms/100 captions")
  ours = _median_ms(lambda: scorer.score(shared_candidates, shared_refs), repeats)
  _row(f"CIDEr-D, {len(shared_refs)} captions: {images} images x {SAMPLES.value} samples",
       ours, None, f"{ours[1] / len(shared_refs) * 100:.2f} cpu ms/100 captions")
  ours = _median_ms(lambda: scorer.score(candidates[:small], distinct_refs[:small]), repeats)
  _row(f"CIDEr-D, {small} captions of {small} images", ours, None,
       f"{ours[1] / small * 100:.2f} cpu ms/100 captions")

  # Corpus evaluation on the same tokens.
  n = EVAL_IMAGES.value
  refs = [[gen.sentence() for _ in range(5)] for _ in range(n)]
  cands = [gen.sentence() for _ in range(n)]
  gts = {i: r for i, r in enumerate(refs)}
  res = {i: [c] for i, c in enumerate(cands)}

  def ours_all():  # what `mmzoo.eval.captions` runs: BLEU and CIDEr-D share n-grams
    return caption_metrics.coco_scores(cands, refs)

  def peer_all():
    return (Bleu(4).compute_score(gts, res, verbose=0), Rouge().compute_score(gts, res),
            Cider().compute_score(gts, res))

  print(f"\nCorpus evaluation, {n} images x 5 references; ms:")
  _header()
  parts = [("BLEU-1..4", lambda: caption_metrics.bleu(cands, refs),
            lambda: Bleu(4).compute_score(gts, res, verbose=0)),
           ("ROUGE-L", lambda: caption_metrics.rouge_l(cands, refs),
            lambda: Rouge().compute_score(gts, res)),
           ("CIDEr-D", lambda: caption_metrics.cider_d(cands, refs),
            lambda: Cider().compute_score(gts, res))]
  for name, ours_fn, peer_fn in parts:
    ours = _median_ms(ours_fn, repeats)
    peer = _median_ms(peer_fn, repeats) if Bleu is not None else None
    _row(name, ours, peer)
  ours = _median_ms(ours_all, repeats)
  peer = _median_ms(peer_all, repeats) if Bleu is not None else None
  _row("BLEU + ROUGE-L + CIDEr-D", ours, peer)

  if TOKENIZE.value:
    raw_refs = {i: [gen.raw() for _ in range(5)] for i in range(n)}
    ptb_tokenizer.tokenize(["Warm-up: compiles the lexer's rules."])
    ours = _median_ms(lambda: ptb_tokenizer.tokenize_by_image(raw_refs), 1)
    peer = None
    java_note = ""
    try:
      from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

      if shutil.which("java"):
        as_dicts = {i: [{"caption": c} for c in caps] for i, caps in raw_refs.items()}
        peer = _median_ms(lambda: PTBTokenizer().tokenize(as_dicts), 1)
      else:
        java_note = "(java not found: peer skipped)"
    except ImportError:
      java_note = "(pycocoevalcap not installed: peer skipped)"
    _row(f"PTB tokenization of {5 * n} captions (1 run)", ours, peer, java_note)

  if Bleu is not None:
    ours_scores, peer_scores = ours_all(), peer_all()
    diffs = {
        "Bleu": max(abs(ours_scores[f"Bleu_{k + 1}"][0] - peer_scores[0][0][k]) for k in range(4)),
        "ROUGE_L": abs(ours_scores["ROUGE_L"][0] - peer_scores[1][0]),
        "CIDEr": abs(ours_scores["CIDEr"][0] - peer_scores[2][0]),
        "CIDEr per image": float(np.max(np.abs(np.array(ours_scores["CIDEr"][1])
                                               - peer_scores[2][1]))),
    }
    print("\nmax |mmzoo - pycocoevalcap|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


if __name__ == "__main__":
  app.run(main)
