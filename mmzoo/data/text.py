"""Plain-text corpora for character-level language models.

The built-in corpus is the Python standard library's own source, read at run
time (char-rnn's Linux-source experiment in miniature): it is on every machine
with Python and ships no copied text. Any UTF-8 file can stand in for it.

Training reads a corpus as `batch_size` contiguous streams and walks them in
consecutive chunks, so a model can carry its hidden state from one chunk of a
stream to the next (truncated backpropagation through time).
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig
from collections.abc import Iterator

import numpy as np

from mmzoo.data import readers
from mmzoo.errors import InputError


def builtin_corpus(max_chars: int) -> str:
  """The standard library's `.py` files, in sorted path order, up to `max_chars`."""
  root = sysconfig.get_paths()["stdlib"]
  parts, total = [], 0
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests"))
    for name in sorted(filenames):
      if not name.endswith(".py"):
        continue
      try:
        with open(os.path.join(dirpath, name), encoding="utf-8") as f:
          text = f.read()
      except (OSError, UnicodeDecodeError):
        continue
      parts.append(text)
      total += len(text)
      if total >= max_chars:
        return "".join(parts)[:max_chars]
  if not parts:
    raise InputError(f"{root}: no readable Python sources for the built-in corpus; "
                     "pass --config.data.path=FILE")
  return "".join(parts)[:max_chars]


def read_corpus(path: str) -> str:
  """Reads a UTF-8 text file; invalid bytes are replaced with a warning."""
  text = readers.read_text(path)
  if not text:
    raise InputError(f"{path}: the corpus is empty")
  return text


@dataclasses.dataclass(frozen=True)
class CharVocab:
  """A character vocabulary: ids are positions in the sorted character list."""

  chars: tuple[str, ...]

  @classmethod
  def from_text(cls, text: str) -> CharVocab:
    return cls(tuple(sorted(set(text))))

  @property
  def size(self) -> int:
    return len(self.chars)

  def unknown(self, text: str) -> list[str]:
    """Characters of `text` outside the vocabulary, in order of appearance."""
    known = set(self.chars)
    return list(dict.fromkeys(c for c in text if c not in known))

  def encode(self, text: str) -> np.ndarray:
    unknown = self.unknown(text)
    if unknown:
      raise InputError(f"characters not in the vocabulary: {unknown!r}")
    index = {c: i for i, c in enumerate(self.chars)}
    return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in ids)

  def to_json(self) -> dict:
    return {"kind": "chars", "chars": "".join(self.chars)}

  @classmethod
  def from_json(cls, data: dict) -> CharVocab:
    return cls(tuple(data["chars"]))


def split_by_position(ids: np.ndarray, validation_fraction: float):
  """The first `1 - validation_fraction` of the text trains, the rest validates."""
  cut = int(round(len(ids) * (1.0 - validation_fraction)))
  return ids[:cut], ids[cut:]


class StreamBatches(Iterator[dict]):
  """Consecutive TBPTT chunks of `batch_size` parallel streams over a corpus.

  The corpus is cut into `batch_size` contiguous streams of equal length. Chunk
  `k` holds, for every stream, `seq_len` input characters and the `seq_len`
  characters that follow each of them. After the last chunk the walk starts
  again from the beginning of every stream, and that chunk's `reset` is True
  so the model restarts from a zero state.

  A process of a multi-host job reads only its own streams
  (`[process_index * n, (process_index + 1) * n)` with `n = batch_size /
  process_count`); the position, which is all the state there is, is the same
  on every process.

  Yields dicts of numpy arrays: `inputs` and `targets` `<int32>[n, seq_len]`,
  `reset` `<bool>[n]`.
  """

  def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, *, process_index: int = 0,
               process_count: int = 1, name: str = "corpus"):
    if batch_size % process_count:
      raise InputError(f"batch size {batch_size} is not divisible by {process_count} processes")
    stream_len = (len(ids) - 1) // batch_size
    self.num_chunks = stream_len // seq_len
    if self.num_chunks < 1:
      raise InputError(
          f"{name}: {len(ids)} characters are too few for {batch_size} streams of "
          f"{seq_len}-character chunks (need at least {batch_size * seq_len + 1})")
    per_process = batch_size // process_count
    first = process_index * per_process
    starts = (np.arange(first, first + per_process) * stream_len)[:, None]
    self._offsets = starts + np.arange(seq_len + 1)[None, :]  # [n, seq_len + 1]
    self._ids = ids
    self._seq_len = seq_len
    self.position = 0  # Chunks consumed since the start of training.

  def chunk(self, k: int) -> dict[str, np.ndarray]:
    window = self._ids[self._offsets + (k % self.num_chunks) * self._seq_len]
    return {
        "inputs": window[:, :-1],
        "targets": window[:, 1:],
        "reset": np.full(window.shape[0], k % self.num_chunks == 0),
    }

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.chunk(self.position)
    self.position += 1
    return batch

  def get_state(self) -> dict:
    return {"position": self.position}

  def set_state(self, state: dict) -> None:
    self.position = int(state["position"])

  def epoch(self) -> Iterator[dict[str, np.ndarray]]:
    """One pass over every chunk from the start, independent of `position`."""
    for k in range(self.num_chunks):
      yield self.chunk(k)

