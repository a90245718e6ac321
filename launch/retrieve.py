r"""Queries a trained joint embedding (VSE, VSE++, order embeddings) from its workdir.

  python launch/retrieve.py --workdir=W --query="a red circle"
  python launch/retrieve.py --workdir=W --image=photo.png
  python launch/retrieve.py --workdir=W --arithmetic="test:12 - red + blue" [--out=grid.png]
  python launch/retrieve.py --workdir=W --arithmetic_accuracy

--query prints the nearest images of --split for a sentence; --image prints the
nearest captions of --split for an image file (or `split:index`); --arithmetic
starts from an image (a file or `split:index`), adds and subtracts words in the
joint space (Kiros et al. 2014's multimodal regularities) and prints the nearest
images, drawn with --out as the query image followed by its results.
--arithmetic_accuracy scores image - colour + colour' over the split's
one-object shapes images. Words outside the vocabulary are refused.
"""

import json
import re

import common
import numpy as np
from absl import flags

from mmzoo import tasks
from mmzoo.data import images
from mmzoo.errors import InputError
from mmzoo.train import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained retrieval workdir.", required=True)
_QUERY = flags.DEFINE_string("query", None, "A sentence: print its nearest images.")
_IMAGE = flags.DEFINE_string("image", None, "An image file or split:index: its nearest captions.")
_ARITHMETIC = flags.DEFINE_string("arithmetic", None,
                                  "`IMAGE - word + word ...`: the nearest images of the sum.")
_ACCURACY = flags.DEFINE_bool("arithmetic_accuracy", False,
                              "Score image - colour + colour' on one-object shapes images.")
_SPLIT = flags.DEFINE_string("split", "test", "The split searched.")
_K = flags.DEFINE_integer("k", 5, "Results to print.")
_OUT = flags.DEFINE_string("out", None, "With --arithmetic: draw the query and results here.")


def _image_vector(task, params, spec: str) -> tuple[np.ndarray, np.ndarray, int | None]:
  """`(embedding, pixels, index in --split or None)` of a file path or `split:index`."""
  match = re.fullmatch(r"(train|validation|test):(\d+)", spec)
  if match:
    split, index = match.group(1), int(match.group(2))
    source = task.split(split)
    if index >= len(source):
      raise InputError(f"{spec}: the {split} split has {len(source)} images")
    pixels = images.pixels(source[index]["image"], spec)
    return task.encode_images(params, pixels[None])[0], pixels, (
        index if split == _SPLIT.value else None)
  size = task.config.data.image_size
  pixels = images.load(spec, size)
  return task.encode_images(params, pixels[None])[0], pixels, None


def _caption(source, index: int) -> str:
  c = source[index]["captions"][0]
  return c.decode("utf-8") if isinstance(c, bytes) else c


def _parse_terms(text: str) -> tuple[str, list[tuple[str, str]]]:
  """`"test:12 - red + blue"` -> ("test:12", [("-", "red"), ("+", "blue")])."""
  parts = re.split(r"\s+([+-])\s+", text.strip())
  if len(parts) < 3 or len(parts) % 2 == 0:
    raise InputError(f"--arithmetic={text!r}: expected `IMAGE - word + word ...` with spaces "
                     "around + and -")
  return parts[0], list(zip(parts[1::2], parts[2::2], strict=True))


def _draw(path: str, query: np.ndarray, results: list[np.ndarray], title: str) -> None:
  from PIL import Image, ImageDraw

  size = query.shape[0]
  scale = max(1, 128 // size)
  cell = size * scale
  canvas = Image.new("RGB", ((len(results) + 1) * (cell + 8) + 8, cell + 36), "white")
  draw = ImageDraw.Draw(canvas)
  draw.text((8, 4), title, fill="black")
  for i, pixels in enumerate([query, *results]):
    tile = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)
    canvas.paste(tile, (8 + i * (cell + 8), 28))
  draw.rectangle((6, 26, 9 + cell, 29 + cell), outline="red", width=2)
  canvas.save(path)


def main(argv):
  del argv
  chosen = [f for f in (_QUERY.value, _IMAGE.value, _ARITHMETIC.value) if f] + (
      ["accuracy"] if _ACCURACY.value else [])
  if len(chosen) != 1:
    raise InputError("give exactly one of --query, --image, --arithmetic, --arithmetic_accuracy")
  task, params, step = loop.restore_workdir(_WORKDIR.value, tasks.build)
  if not hasattr(task, "encode_text"):
    raise InputError(f"{_WORKDIR.value}: holds a {task.config.task} model, not a retrieval one")
  source = task.split(_SPLIT.value)
  if _ACCURACY.value:
    print(json.dumps({"step": step, "split": _SPLIT.value,
                      **task.arithmetic_accuracy(params, _SPLIT.value, _K.value)}))
    return
  if _QUERY.value:
    task.check_words(_QUERY.value)
    query = task.encode_text(params, [_QUERY.value])
    found, scores = task.nearest(query, task.split_images(params, _SPLIT.value), _K.value)
    for rank, (i, s) in enumerate(zip(found[0], scores[0], strict=True)):
      print(f"{rank + 1}. {_SPLIT.value}:{i}  score {s:.3f}  ({_caption(source, i)})")
    return
  if _IMAGE.value:
    vector, _, _ = _image_vector(task, params, _IMAGE.value)
    captions = [c.decode("utf-8") if isinstance(c, bytes) else c
                for i in range(len(source)) for c in source[i]["captions"][:task.k]]
    caption_emb = task.encode_text(params, captions)
    found, scores = task.nearest(vector[None], caption_emb, _K.value)
    for rank, (i, s) in enumerate(zip(found[0], scores[0], strict=True)):
      print(f"{rank + 1}. score {s:.3f}  {captions[i]}")
    return
  image_spec, terms = _parse_terms(_ARITHMETIC.value)
  vector, pixels, own_index = _image_vector(task, params, image_spec)
  query = task.arithmetic(params, vector, terms)
  exclude = None if own_index is None else np.array([own_index])
  found, scores = task.nearest(query[None], task.split_images(params, _SPLIT.value), _K.value,
                               exclude=exclude)
  for rank, (i, s) in enumerate(zip(found[0], scores[0], strict=True)):
    print(f"{rank + 1}. {_SPLIT.value}:{i}  score {s:.3f}  ({_caption(source, i)})")
  if _OUT.value:
    _draw(_OUT.value, pixels, [images.pixels(source[i]["image"]) for i in found[0]],
          _ARITHMETIC.value)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  common.run(main)
