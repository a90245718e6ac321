"""Caption metrics (mmzoo.eval.caption_metrics, ptb_tokenizer, captions) vs coco-caption.

The reference is pycocoevalcap 1.2 (`pip install pycocoevalcap==1.2`); its tokenizer and
METEOR need Java. Tests that need either skip, saying why, when they are missing.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mmzoo.errors import InputError
from mmzoo.eval import caption_metrics, captions, ptb_tokenizer, registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pycocoevalcap():
  return pytest.importorskip("pycocoevalcap.bleu.bleu", reason="pycocoevalcap is not installed "
                             "(pip install pycocoevalcap==1.2)")


def _need_java():
  if shutil.which("java") is None:
    pytest.skip("java is not on PATH (pycocoevalcap's tokenizer and METEOR need it)")


# ------------------------------------------------------------------------------------------
# A randomized corpus with the edge cases coco-caption's scorers must agree on.

_VOCAB = ("a an the man woman dog cat two people sitting standing on top of next to in front "
          "table street red blue white large small riding wave surfboard pizza plate kite bus "
          "train field grass playing frisbee holding umbrella with near").split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
  # Zipf-like word choice, so that document frequencies range from rare to everywhere.
  return " ".join(_VOCAB[min(int(rng.paretovariate(1.0)) - 1, len(_VOCAB) - 1)]
                  if rng.random() < 0.6 else rng.choice(_VOCAB)
                  for _ in range(rng.randint(lo, hi)))


def _corpus(seed: int = 0, images: int = 300) -> tuple[list[str], list[list[str]]]:
  rng = random.Random(seed)
  candidates, references = [], []
  for i in range(images):
    refs = [_sentence(rng, 1, 16) for _ in range(rng.randint(1, 7))]
    kind = i % 10
    if kind == 0:
      candidate = ""  # empty
    elif kind == 1:
      candidate = " ".join(_sentence(rng, 1, 3).split()[:3])  # fewer than 4 tokens
    elif kind == 2:
      candidate = " ".join(["a", "dog", "a", "dog", "a", "dog", "on", "a", "dog"])  # repeats
    elif kind == 3:
      candidate = rng.choice(refs)  # identical to a reference
    else:
      candidate = _sentence(rng, 1, 18)
    candidates.append(candidate)
    references.append(refs)
  return candidates, references


def _as_dicts(candidates, references):
  gts = {i: list(refs) for i, refs in enumerate(references)}
  res = {i: [c] for i, c in enumerate(candidates)}
  return gts, res


# ------------------------------------------------------------------------------------------
# Hand-computed values (no pycocoevalcap).


def test_bleu_by_hand():
  # the cat sat on the mat / the cat is on the mat: p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0.
  corpus, per_image = caption_metrics.bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
  assert corpus[0] == pytest.approx(5 / 6, abs=1e-8)
  assert corpus[1] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-8)
  assert corpus[2] == pytest.approx(0.5, abs=1e-8)  # (5/6 * 3/5 * 1/4) ** (1/3) = 1/2
  assert corpus[3] < 1e-3  # only the 1e-15 smoothing is left
  assert [s[0] for s in per_image] == pytest.approx(corpus, abs=1e-12)


def test_bleu_brevity_penalty_and_closest_length():
  # 2 words against 6: precisions 1, brevity penalty exp(1 - 6/2).
  corpus, _ = caption_metrics.bleu(["the cat"], [["the cat sat on the mat"]], n=2)
  assert corpus == pytest.approx([math.exp(-2), math.exp(-2)], abs=1e-8)
  # 4 words, references of 3 and 5: equally close, coco-caption takes the shorter, so no
  # penalty (taking 5 would give exp(1 - 5/4)).
  corpus, _ = caption_metrics.bleu(["a b c d"], [["a b c", "a b c d e"]], n=1)
  assert corpus[0] == pytest.approx(1.0, abs=1e-8)
  # The corpus penalty uses the summed lengths: 2 + 4 words against 6 + 4.
  corpus, per_image = caption_metrics.bleu(["a b", "c d e f"], [["a b x y z w"], ["c d e f"]], n=1)
  assert corpus[0] == pytest.approx(math.exp(1 - 10 / 6), abs=1e-8)
  assert per_image[0] == pytest.approx([math.exp(1 - 6 / 2), 1.0], abs=1e-8)


def test_rouge_l_by_hand():
  # LCS("a b c d e", "a x c y e z") = 3 (a c e): P = 3/5, R = 3/6.
  p, r, b2 = 3 / 5, 3 / 6, 1.2**2
  corpus, per_image = caption_metrics.rouge_l(["a b c d e"], [["a x c y e z"]])
  assert corpus == pytest.approx((1 + b2) * p * r / (r + b2 * p), abs=1e-12)
  # P and R are maximised over references separately: P from the first (LCS 2 of 2 words),
  # R from the second (LCS 1 of 1 word).
  _, per_image = caption_metrics.rouge_l(["a b"], [["a b c d", "b"]])
  assert per_image[0] == pytest.approx((1 + b2) * 1.0 * 1.0 / (1.0 + b2 * 1.0), abs=1e-12)
  assert caption_metrics.rouge_l(["q"], [["a b"]])[0] == 0.0


def _lcs_dp(a, b):
  table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      table[i][j] = (table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1]
                     else max(table[i - 1][j], table[i][j - 1]))
  return table[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming():
  rng = random.Random(1)
  for _ in range(500):
    a = [rng.choice("abcd") for _ in range(rng.randint(0, 20))]
    b = [rng.choice("abcd") for _ in range(rng.randint(0, 20))]
    masks: dict = {}
    for i, t in enumerate(a):
      masks[t] = masks.get(t, 0) | (1 << i)
    assert caption_metrics._lcs_length(masks, (1 << len(a)) - 1, len(a), b) == _lcs_dp(a, b)


def test_cider_d_fixed_document_frequencies_by_hand():
  # Unigrams only. Corpus of 2 images, "a" in one, "c" and "d" in the other: ref_len =
  # log 2, idf(a) = idf(c) = log 2 - log 1, and "b" (absent) also gets log 2. Candidate
  # "a b" and reference "a c" have equal norms sqrt(2) log 2 and share "a": cosine 1/2,
  # no length penalty (no bigrams), x10 -> 5.
  scorer = caption_metrics.CiderD.from_corpus({1: ["a"], 2: ["c d"]}, n=1)
  assert scorer.ref_len == pytest.approx(math.log(2))
  assert scorer.score(["a b"], [["a c"]]) == pytest.approx([5.0], abs=1e-12)


def test_cider_d_document_frequencies_from_another_corpus():
  # In this corpus "dog" is everywhere (idf 0) and "zebra" in one image of four.
  corpus = [["a dog runs"], ["the dog sleeps"], ["dog and cat"], ["a zebra and a dog"]]
  scorer = caption_metrics.CiderD.from_corpus(corpus)
  references = [["dog zebra"]]
  on_common = scorer.score(["dog"], references)[0]
  on_rare = scorer.score(["zebra"], references)[0]
  assert on_common == 0.0  # a match on an n-gram of every corpus image is worth nothing
  assert on_rare > 1.0
  # With frequencies from the evaluated references alone, the two matches are worth the
  # same (and, one image, log(1) = 0: every idf is 0, as coco-caption gives).
  own = caption_metrics.CiderD.from_corpus(references)
  assert own.score(["dog"], references)[0] == own.score(["zebra"], references)[0] == 0.0
  # Unknown n-grams get the largest idf, which lowers the cosine of a partial match.
  with_unknown = scorer.score(["zebra gnu"], references)[0]
  assert 0.0 < with_unknown < on_rare


def test_cider_d_batches_and_token_ids():
  candidates, references = _corpus(seed=3, images=60)
  scorer = caption_metrics.CiderD.from_corpus(references)
  expected = scorer.score(candidates, references)
  # A score depends on its own image only, whatever else is in the batch.
  pieces = [scorer.score(candidates[i:i + 7], references[i:i + 7]) for i in range(0, 60, 7)]
  np.testing.assert_allclose(np.concatenate(pieces), expected, rtol=0, atol=1e-12)
  assert scorer.score([], []).shape == (0,)
  size = len(scorer._vocabulary)
  assert scorer.score(["okapi okapi"], [["an okapi"]])[0] > 0  # words the corpus lacks
  assert len(scorer._vocabulary) == size
  # SCST: several sampled captions per image share its reference list (and its work).
  samples = [c for c in candidates[:10] for _ in range(4)]
  shared = [references[i // 4] for i in range(40)]
  one_by_one = [scorer.score([c], [r])[0] for c, r in zip(samples, shared, strict=True)]
  np.testing.assert_allclose(scorer.score(samples, shared), one_by_one, rtol=0, atol=1e-12)
  # Sequences of token ids score the same as the strings they encode.
  ids = {w: i for i, w in enumerate(_VOCAB)}
  encode = lambda s: [ids[w] for w in s.split()]  # noqa: E731
  id_refs = [[encode(r) for r in refs] for refs in references]
  by_ids = caption_metrics.CiderD.from_corpus(id_refs)
  np.testing.assert_allclose(by_ids.score([encode(c) for c in candidates], id_refs), expected,
                             rtol=0, atol=1e-12)


def test_inputs_are_checked():
  with pytest.raises(ValueError, match="2 candidates but 1"):
    caption_metrics.bleu(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match="non-empty list"):
    caption_metrics.cider_d(["a"], [[]])
  with pytest.raises(ValueError, match="non-empty list"):
    caption_metrics.rouge_l(["a"], ["a"])


# ------------------------------------------------------------------------------------------
# Equality with pycocoevalcap's scorers on the same tokens.


def test_bleu_rouge_cider_equal_pycocoevalcap():
  _pycocoevalcap()
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge

  candidates, references = _corpus()
  gts, res = _as_dicts(candidates, references)
  diffs = {}

  ref_bleu, ref_bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
  bleu, bleu_images = caption_metrics.bleu(candidates, references)
  for k in range(4):
    diffs[f"Bleu_{k + 1}"] = max(abs(bleu[k] - ref_bleu[k]),
                                 np.max(np.abs(np.array(bleu_images[k]) - ref_bleu_images[k])))

  ref_rouge, ref_rouge_images = Rouge().compute_score(gts, res)
  rouge, rouge_images = caption_metrics.rouge_l(candidates, references)
  diffs["ROUGE_L"] = max(abs(rouge - ref_rouge),
                         np.max(np.abs(np.array(rouge_images) - ref_rouge_images)))

  ref_cider, ref_cider_images = Cider().compute_score(gts, res)
  cider, cider_images = caption_metrics.cider_d(candidates, references)
  diffs["CIDEr"] = max(abs(cider - ref_cider),
                       np.max(np.abs(np.array(cider_images) - ref_cider_images)))
  # Fixed document frequencies taken from the evaluated references: the same numbers.
  fixed = caption_metrics.CiderD.from_corpus(references).score(candidates, references)
  diffs["CIDEr (fixed df)"] = np.max(np.abs(fixed - ref_cider_images))

  # The shared-n-gram form that `evaluate_captions` runs.
  combined = caption_metrics.coco_scores(candidates, references)
  references_by_name = {f"Bleu_{k + 1}": (ref_bleu[k], ref_bleu_images[k]) for k in range(4)}
  references_by_name["ROUGE_L"] = (ref_rouge, ref_rouge_images)
  references_by_name["CIDEr"] = (ref_cider, ref_cider_images)
  assert sorted(combined) == sorted(references_by_name)
  for name, (corpus, images) in combined.items():
    ref_corpus, ref_images = references_by_name[name]
    diffs[f"{name} (coco_scores)"] = max(abs(corpus - ref_corpus),
                                         np.max(np.abs(np.array(images) - ref_images)))

  print("max |ours - pycocoevalcap|:", {k: float(v) for k, v in diffs.items()})
  assert 0.1 < ref_cider < 10 and 0.1 < ref_bleu[0] < 1  # a non-degenerate corpus
  for name, diff in diffs.items():
    assert diff <= 1e-9, name


def test_cider_d_with_another_corpus_equals_pycocoevalcap_formula():
  """Frequencies from a corpus other than the evaluated set (with words the corpus lacks),
  against pycocoevalcap's own `compute_cider` given that corpus's document frequencies."""
  _pycocoevalcap()
  from collections import defaultdict

  from pycocoevalcap.cider.cider_scorer import CiderScorer, precook

  _, corpus = _corpus(seed=5, images=200)
  candidates, references = _corpus(seed=6, images=150)
  references = [refs + ["an okapi near a quagga"] if i % 4 == 0 else refs
                for i, refs in enumerate(references)]
  candidates = [c + " okapi zebu" if i % 3 == 0 else c for i, c in enumerate(candidates)]
  ours = caption_metrics.CiderD.from_corpus(corpus).score(candidates, references)

  class Images(list):  # compute_cider takes ref_len = log(len(crefs)): the corpus's size
    def __len__(self):
      return len(corpus)

  scorer = CiderScorer(n=4, sigma=6.0)
  for candidate, refs in zip(candidates, references, strict=True):
    scorer += (candidate, refs)
  df: defaultdict = defaultdict(float)
  for refs in corpus:
    for ngram in {g for ref in refs for g in precook(ref, 4)}:
      df[ngram] += 1
  scorer.document_frequency = df
  scorer.crefs = Images(scorer.crefs)
  expected = np.array(scorer.compute_cider())
  print("max |ours - pycocoevalcap| (corpus df):", float(np.max(np.abs(ours - expected))))
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
  assert not np.allclose(ours, caption_metrics.cider_d(candidates, references)[1])


# ------------------------------------------------------------------------------------------
# The PTB tokenizer.

_TRICKY = [
    "A man (in a hat) said \"don't go\" to the dog's owner.",
    "It's 3.5 miles, at 10:30 a.m. on Jan. 5th... ok?",
    "The cat's toy isn't here.  She'd've gone. They're  we'll I'm you've",
    "the dogs' bones and James' car",
    "a/b and/or 1/2 3-4 5 7/8 U.S. Mr. Smith St. Louis etc. The end.",
    "café naïve 日本 emoji 😀 here {braces} [brackets] <angle>",
    "'quoted' `back` ''double'' “curly” ‘single’ – — …",
    "gonna wanna cannot gotta lemme o'clock y'all ma'am rock 'n' roll",
    "A well-known man -- yes - no --- maybe ... and so on....",
    "  TRAILING and   multiple   spaces   ",
    "Two DOGS Playing In The GRASS",
    "A sign that reads \"STOP\".",
    "a 1970s-era car, a 5-year-old boy, $5 & 10% off!",
    "Dr. Who? Prof. X! e.g. i.e. vs. Ph.D.",
    "www.example.com and http://example.com/a?b=1 and foo@bar.com",
    "A man on a horse.\nA second line in the same caption.",
    "",
    "tab\tseparated\twords and a no-break\u00a0space",
    "Crème brûlée; Zürich: Ελληνικά ΣΑΣ Русский",
    "He said: 'hello'... then left (quickly)",
    "#1 @user c++ AT&T Q&A 3D 1080p 16:9 x2",
    "a.m. p.m. A.M. The letter b. The end",
]

_FRAGMENTS = (
    _VOCAB + "don't it's dog's dogs' I'm they're can't won't 'em '90s o'clock".split()
    + "Mr. Dr. St. etc. e.g. U.S. a.m. No. Inc. Jan. Calif. A. b.".split()
    + "3 3.5 10:30 1/2 3,000 -5 $5 5% 1990s 5-year-old".split()
    + list(".,;:!?'\"`()[]{}<>-/&*#@$%+=_") + "-- ... .... '' `` :) ;-(".split()
    + "well-known T-shirt a/b and/or AT&T www.a.com a@b.org café “ ” ‘ ’ – — … ½".split())


def _random_captions(count: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  out = []
  for _ in range(count):
    parts = [rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 12))]
    seps = [rng.choice([" ", " ", " ", "", "  "]) for _ in parts]
    caption = "".join(p + s for p, s in zip(parts, seps, strict=True))
    out.append(caption[:1].upper() + caption[1:] if rng.random() < 0.5 else caption)
  return out


def test_ptb_tokenizer_by_hand():
  cases = {
      "A man (in a hat) said \"don't go\".": "a man -lrb- in a hat -rrb- said do n't go",
      "It's the dog's ball, isn't it?": "it 's the dog 's ball is n't it",
      "Two dogs' bones... at 10:30 a.m.": "two dogs bones at 10:30 a.m.",
      "A well-known 3.5-inch e-mail -- a/b": "a well-known 3.5-inch e-mail a/b",
      "gonna CANNOT": "gon na can not",
      "A   STOP sign  ": "a stop sign",
      "Mr. Smith lives in the U.S. The end.": "mr. smith lives in the u.s. the end",
      "[x] {y}": "-lsb- x -rsb- -lcb- y -rcb-",
      "5 7/8 inches": "5\u00a07/8 inches",
      "emoji 😀 gone": "emoji gone",
      "line one\nline two": "line one line two",
      "carriage\rreturn": "carriage return",  # Java would start a new line here
      "": "",
  }
  got = ptb_tokenizer.tokenize(list(cases))
  assert dict(zip(cases, got, strict=True)) == cases
  assert ptb_tokenizer.tokenize_by_image({7: ["A dog."], "8": [{"caption": "Cats!"}]}) == {
      7: ["a dog"], "8": ["cats"]}
  # A lookahead rule sees the next caption, as in coco-caption's one-file-per-batch run:
  # "b." before "The ..." is the letter b and a sentence end.
  assert ptb_tokenizer.ptb_tokens("plan b.", "The end") == ["plan", "b", "."]
  assert ptb_tokenizer.ptb_tokens("plan b.", "the end") == ["plan", "b."]


def test_ptb_tokenizer_equals_pycocoevalcap_java():
  _pycocoevalcap()
  _need_java()
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  texts = _TRICKY + _random_captions(400) + ["The last caption."]  # not empty: see below
  # One Java run for everything (pycocoevalcap drops a final empty line of its output).
  by_image = {i: [{"caption": t}] for i, t in enumerate(texts)}
  try:
    expected = PTBTokenizer().tokenize(by_image)
  except PermissionError as e:  # it writes its input file next to its jar
    pytest.skip(f"pycocoevalcap's tokenizer cannot write its temporary file: {e}")
  ours = ptb_tokenizer.tokenize_by_image(by_image)
  mismatches = [(texts[i], expected[i][0], ours[i][0]) for i in range(len(texts))
                if expected[i] != ours[i]]
  assert not mismatches, mismatches[:5]


# ------------------------------------------------------------------------------------------
# evaluate_captions, the registry and the command line.

_REFS = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave."],
    2: ["Two dogs playing in the grass.", "A couple of dogs play on a lawn.", "Dogs run."],
    3: ["A plate of pizza on a table.", "Pizza (pepperoni) on a white plate."],
}
_PREDS = {1: "a man riding a wave on a surfboard", 2: "two dogs in the grass",
          3: "a pizza on a plate"}


def test_evaluate_captions_matches_metrics_on_ptb_tokens():
  metrics, per_image = captions.evaluate_captions(_REFS, _PREDS)
  assert list(metrics) == list(captions.METRICS)
  refs = [ptb_tokenizer.tokenize(r) for r in _REFS.values()]
  cands = ptb_tokenizer.tokenize(list(_PREDS.values()))
  assert metrics["CIDEr"] == caption_metrics.cider_d(cands, refs)[0]
  assert metrics["Bleu_4"] == caption_metrics.bleu(cands, refs)[0][3]
  assert set(per_image) == {1, 2, 3} and list(per_image[2]) == list(captions.METRICS)
  # String and integer ids name the same image; tokenize="none" scores the text as is.
  same, _ = captions.evaluate_captions({str(k): v for k, v in _REFS.items()},
                                       {k: [v] for k, v in _PREDS.items()})
  assert same == metrics
  raw, _ = captions.evaluate_captions({1: ["A b c"]}, {1: "A b c"}, tokenize="none")
  assert raw["Bleu_1"] == pytest.approx(1.0)


def test_evaluate_captions_errors():
  with pytest.raises(InputError, match=r"1 predicted image has no references: 9"):
    captions.evaluate_captions(_REFS, {**_PREDS, 9: "x"})
  with pytest.raises(InputError, match=r"1 referenced image has no prediction: 3"):
    captions.evaluate_captions(_REFS, {1: "x", 2: "y"})
  partial, per_image = captions.evaluate_captions(_REFS, {1: "x", 9: "y"}, intersection=True)
  assert list(per_image) == [1]
  with pytest.raises(InputError, match="exactly one caption"):
    captions.evaluate_captions(_REFS, {1: ["a", "b"]}, intersection=True)
  with pytest.raises(InputError, match="not a string"):
    captions.evaluate_captions({1: ["ok", 5]}, {1: "x"})
  with pytest.raises(InputError, match="appears twice"):
    captions.evaluate_captions({1: ["a"], "1": ["b"]}, {1: "x"})


def test_registered_evaluator():
  class Task:
    def caption_predictions(self, params, mesh, split):
      assert split == "validation"
      return _REFS, _PREDS

  metrics = registry.get("captions")(Task(), None, None, "validation")
  assert metrics == captions.evaluate_captions(_REFS, _PREDS)[0]


def _write(tmp_path, name, data) -> str:
  path = tmp_path / name
  path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
  return str(path)


def _run_main(capsys, *args) -> tuple[int, dict | None, str]:
  code = captions.main(["--meteor", "off", *args])
  out, err = capsys.readouterr()
  return code, (json.loads(out) if code == 0 else None), err


def test_cli_layouts_and_per_image(tmp_path, capsys):
  coco_refs = {"images": [{"id": k} for k in _REFS],
               "annotations": [{"image_id": k, "id": i, "caption": c}
                               for i, (k, caps) in enumerate(_REFS.items()) for c in caps]}
  coco_res = [{"image_id": k, "caption": c} for k, c in _PREDS.items()]
  expected, expected_images = captions.evaluate_captions(_REFS, _PREDS)
  per_image = str(tmp_path / "per_image.json")
  code, out, err = _run_main(capsys, "--references", _write(tmp_path, "refs.json", coco_refs),
                             "--predictions", _write(tmp_path, "res.json", coco_res),
                             "--per_image", per_image)
  assert code == 0 and out == expected and not err
  with open(per_image) as f:
    assert json.load(f) == {str(k): v for k, v in expected_images.items()}
  # {image_id: [captions]} and {image_id: [caption]}, keys strings in JSON.
  code, out, _ = _run_main(capsys, "--references", _write(tmp_path, "r.json", _REFS),
                           "--predictions", _write(tmp_path, "p.json",
                                                   {k: [c] for k, c in _PREDS.items()}))
  assert code == 0 and out == expected


def test_cli_mismatched_ids_and_intersection(tmp_path, capsys):
  refs = _write(tmp_path, "r.json", _REFS)
  preds = _write(tmp_path, "p.json", {"1": ["a man on a wave"], "77": ["a cat"]})
  code, _, err = _run_main(capsys, "--references", refs, "--predictions", preds)
  assert code == 1 and err.count("\n") == 1 and err.startswith("error: ")
  assert "77" in err and "Traceback" not in err
  code, out, _ = _run_main(capsys, "--references", refs, "--predictions", preds, "--intersection")
  assert code == 0
  assert out == captions.evaluate_captions({1: _REFS[1]}, {1: "a man on a wave"})[0]


@pytest.mark.parametrize("refs_text, preds_text, message", [
    ('{"1": ["a"', None, "invalid JSON"),
    ([1, 2], None, "expected a COCO annotation file"),
    ({"1": "not a list"}, None, "expected a list of captions"),
    ({"annotations": [{"image_id": 1, "caption": 5}]}, None, "caption is not a string"),
    (None, {"1": ["a", "b"]}, "expected exactly one predicted caption"),
    (None, [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}],
     "more than one predicted caption"),
    (None, [{"image_id": 1}], 'not an object with "image_id" and "caption"'),
])
def test_cli_bad_input(tmp_path, capsys, refs_text, preds_text, message):
  refs = _write(tmp_path, "r.json", refs_text if refs_text is not None else _REFS)
  preds = _write(tmp_path, "p.json", preds_text if preds_text is not None else
                 {k: [c] for k, c in _PREDS.items()})
  code, _, err = _run_main(capsys, "--references", refs, "--predictions", preds)
  bad = refs if refs_text is not None else preds
  assert code == 1 and err.count("\n") == 1, err
  assert err.startswith(f"error: {bad}: ") and message in err, err


def test_cli_subprocess_missing_file(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  preds = _write(tmp_path, "p.json", {"1": ["a"]})
  missing = str(tmp_path / "nope.json")
  proc = subprocess.run([sys.executable, "-m", "mmzoo.eval.captions", "--references", missing,
                         "--predictions", preds, "--meteor", "off"],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr == f"error: {missing}: no such file\n"


def test_cli_meteor_and_spice_unavailable(tmp_path, capsys, monkeypatch):
  refs = _write(tmp_path, "r.json", _REFS)
  preds = _write(tmp_path, "p.json", {k: [c] for k, c in _PREDS.items()})
  monkeypatch.setattr(captions.shutil, "which", lambda name: None)
  code = captions.main(["--references", refs, "--predictions", preds])  # --meteor auto
  out, err = capsys.readouterr()
  assert code == 0 and "METEOR" not in json.loads(out)
  assert err == "note: METEOR omitted: java is not on PATH\n"
  code = captions.main(["--references", refs, "--predictions", preds, "--meteor", "on"])
  _, err = capsys.readouterr()
  assert code == 1 and "METEOR" in err and "java is not on PATH" in err
  code = captions.main(["--references", refs, "--predictions", preds, "--meteor", "off",
                        "--spice", "on"])
  _, err = capsys.readouterr()
  assert code == 1 and err.startswith("error: SPICE was asked for")


def test_spice_reports_missing_models():
  _pycocoevalcap()
  _need_java()
  reason = captions.spice_unavailable()
  if reason is None:
    pytest.skip("SPICE's Stanford models are installed here")
  assert "stanford-corenlp-3.6.0" in reason and "downloads" in reason
  with pytest.raises(InputError, match="SPICE was asked for but cannot run"):
    captions.evaluate_captions(_REFS, _PREDS, spice=True)


def test_meteor_equals_pycocoevalcap():
  _pycocoevalcap()
  _need_java()
  if captions.meteor_unavailable():
    pytest.skip(f"METEOR cannot run: {captions.meteor_unavailable()}")
  from pycocoevalcap.meteor.meteor import Meteor

  metrics, per_image = captions.evaluate_captions(_REFS, _PREDS, meteor=True)
  assert list(metrics) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
  gts = {k: ptb_tokenizer.tokenize(v) for k, v in _REFS.items()}
  res = {k: ptb_tokenizer.tokenize([v]) for k, v in _PREDS.items()}
  scorer = Meteor()
  score, scores = scorer.compute_score(gts, res)
  del scorer
  assert metrics["METEOR"] == pytest.approx(score, abs=1e-12)
  assert [per_image[k]["METEOR"] for k in _REFS] == pytest.approx(list(scores), abs=1e-12)
