"""Caption tokenizers: a word vocabulary and sentencepiece, both checkpointable.

Both share one interface (`encode`, `decode`, `vocab_size` and the special ids
`pad_id`=0, `bos_id`=1, `eos_id`=2, `unk_id`=3) and round-trip through a
checkpoint's JSON artifacts (`to_artifact` / `from_artifact`), so evaluation
rebuilds exactly the tokenizer a model was trained with. Both are built from the
training split only.

The word vocabulary normalises text as coco-caption does before scoring
(PTB tokenization, lowercasing, punctuation tokens removed), so what a captioner
learns to produce is what the metrics read.
"""

from __future__ import annotations

import base64
import collections
import io
from collections.abc import Iterable, Sequence

import numpy as np

from mmzoo.errors import InputError

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def normalize(texts: Sequence[str]) -> list[list[str]]:
  """coco-caption's normalisation: PTB tokens, lowercased, punctuation removed."""
  from mmzoo.eval import ptb_tokenizer

  return [line.split() for line in ptb_tokenizer.tokenize(list(texts))]


class _Specials:
  pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    return self.encode_batch([text], add_bos=add_bos, add_eos=add_eos)[0]

  def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False,
                   add_eos: bool = False) -> list[list[int]]:
    ids = self._encode_batch(texts)
    return [[BOS_ID] * add_bos + x + [EOS_ID] * add_eos for x in ids]

  def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    raise NotImplementedError

  @staticmethod
  def _strip(ids: Iterable[int]) -> list[int]:
    """Drops pad and bos, and everything from the first eos on."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID):
        out.append(i)
    return out


class WordVocab(_Specials):
  """Words seen at least `min_count` times in the training captions, most frequent first."""

  def __init__(self, words: Sequence[str]):
    if tuple(words[:len(SPECIALS)]) != SPECIALS:
      raise InputError(f"a word vocabulary must start with {SPECIALS}")
    self.words = list(words)
    self.index = {w: i for i, w in enumerate(self.words)}
    if len(self.index) != len(self.words):
      raise InputError("a word vocabulary lists a word twice")

  @classmethod
  def build(cls, captions: Iterable[str], min_count: int = 5,
            max_size: int | None = None) -> WordVocab:
    counts = collections.Counter()
    for tokens in normalize(list(captions)):
      counts.update(tokens)
    kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                  key=lambda w: (-counts[w], w))
    if max_size is not None:
      kept = kept[:max(0, max_size - len(SPECIALS))]
    if not kept:
      raise InputError(f"no word occurs {min_count} or more times in the training captions")
    return cls(SPECIALS + tuple(kept))

  @property
  def vocab_size(self) -> int:
    return len(self.words)

  def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [[self.index.get(w, UNK_ID) for w in tokens] for tokens in normalize(texts)]

  def decode(self, ids: Iterable[int]) -> str:
    return " ".join(self.words[i] for i in self._strip(ids))

  def to_artifact(self) -> dict:
    return {"kind": "word", "words": self.words}


class SentencePieceTokenizer(_Specials):
  """A sentencepiece model (unigram or BPE) trained on the training captions.

  Identity normalisation and byte fallback make `decode(encode(text)) == text`
  for any UTF-8 text, characters unseen in training included.
  """

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm

    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

  @classmethod
  def train(cls, captions: Iterable[str], vocab_size: int = 1000,
            model_type: str = "unigram") -> SentencePieceTokenizer:
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
      raise ValueError(f"model_type must be unigram or bpe, not {model_type!r}")
    model = io.BytesIO()
    if vocab_size < 256 + len(SPECIALS) + 1:
      raise InputError(f"sentencepiece vocab_size {vocab_size} is too small: byte fallback "
                       f"alone takes 256 + {len(SPECIALS)} pieces")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(captions)), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2, num_threads=1)
    return cls(model.getvalue())

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode(self._strip(ids))

  def to_artifact(self) -> dict:
    return {"kind": "sentencepiece", "model": base64.b64encode(self.model_proto).decode()}


Tokenizer = WordVocab | SentencePieceTokenizer


def build(kind: str, captions: Sequence[str], **kwargs) -> Tokenizer:
  """A tokenizer of `kind` ("word" or "sentencepiece") from the training captions."""
  if kind == "word":
    return WordVocab.build(captions, **kwargs)
  if kind == "sentencepiece":
    return SentencePieceTokenizer.train(captions, **kwargs)
  raise ValueError(f"unknown tokenizer {kind!r}; use word or sentencepiece")


def from_artifact(artifact: dict) -> Tokenizer:
  """The tokenizer a checkpoint saved with `to_artifact`."""
  kind = artifact.get("kind")
  if kind == "word":
    return WordVocab(artifact["words"])
  if kind == "sentencepiece":
    return SentencePieceTokenizer(base64.b64decode(artifact["model"]))
  raise InputError(f"unknown tokenizer kind {kind!r} in checkpoint artifacts")


def pad(sequences: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """`(<int32>[n, max_len] ids, <int32>[n] lengths)`: truncated to `max_len`, 0-padded."""
  ids = np.full((len(sequences), max_len), PAD_ID, np.int32)
  lengths = np.zeros(len(sequences), np.int32)
  for row, seq in enumerate(sequences):
    seq = seq[:max_len]
    ids[row, :len(seq)] = seq
    lengths[row] = len(seq)
  return ids, lengths
