"""TFDS builders: the shapes world, Karpathy-split captions and COCO captions.

Each writes `array_record` files read back with `tfds.data_source` (random
access, no TensorFlow: images are encoded by Pillow before TFDS sees them, text
is `Text` / `Sequence(Text())`). `tfds.load` and `as_dataset` would need
TensorFlow, so nothing here uses them.

- `shapes/<kind>`: the procedural world (`mmzoo.data.shapes`), one config per kind
  of text: captions, vqa, personality, stories. Sizes, image size and seed are
  part of the config name whenever they differ from the defaults, so datasets of
  different settings live side by side in one data_dir.
- `karpathy_captions/<name>`: a Karpathy-split JSON plus the user's images.
- `coco_captions/<name>`: COCO caption annotation files (one per split) plus images.

Real images are decoded in full, converted to RGB and resized to a fixed square
(`image_size`, default 256) when the dataset is built, so an unreadable image is
found then, named, and either stops the build or is skipped and reported
(`readers.BadData`); it never reaches a model as a silent all-zero tensor.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mmzoo.data import images, readers
from mmzoo.errors import InputError

_DOWNLOAD = tfds.download.DownloadConfig(try_download_gcs=False)
SPLITS = ("train", "validation", "test")


_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """A pool of `workers` processes, started once (spawned: the parent may run JAX
  threads, which forking could leave deadlocked) and reused by every later build."""
  if workers not in _POOLS:
    if not _POOLS:
      atexit.register(_shut_pools)
    _POOLS[workers] = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
  return _POOLS[workers]


def _shut_pools() -> None:
  """Stops the idle workers before the interpreter tears its modules down."""
  while _POOLS:
    _POOLS.popitem()[1].shutdown(wait=True, cancel_futures=True)


def _parallel_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
  """`map(fn, items)` in order, over `workers` processes when more than one.

  Spawned workers re-import the `__main__` module; a script that builds at its top
  level, with no `if __name__ == "__main__":` guard, makes them fail as they start.
  The work then continues in this process, with a warning, rather than hanging.
  """
  items = list(items)
  if workers <= 1 or len(items) < 64:
    yield from map(fn, items)
    return
  done = 0
  try:
    for result in _pool(workers).map(fn, items, chunksize=32):
      yield result
      done += 1
  except concurrent.futures.process.BrokenProcessPool:
    _POOLS.pop(workers).shutdown(wait=False, cancel_futures=True)
    logging.warning("dataset worker processes died as they started (does the script that "
                    "builds datasets lack an `if __name__ == \"__main__\":` guard?); "
                    "building in this process instead")
    yield from map(fn, items[done:])


def prepare(builder: tfds.core.GeneratorBasedBuilder) -> tfds.core.GeneratorBasedBuilder:
  """Builds the dataset unless it is already built; returns the builder."""
  tfds.disable_progress_bar()
  builder.download_and_prepare(file_format="array_record", download_config=_DOWNLOAD)
  return builder


def _config_name(text: str) -> str:
  return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "default"


# --- the shapes world ---------------------------------------------------------------------

SHAPES_KINDS = ("captions", "vqa", "personality", "stories")
DEFAULT_SHAPES_SIZES = {"captions": (20000, 1000, 1000), "vqa": (20000, 1000, 1000),
                        "personality": (20000, 1000, 1000), "stories": (4000, 500, 500)}


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  kind: str = "captions"
  sizes: tuple[int, int, int] = (20000, 1000, 1000)
  image_size: int = 64
  seed: int = 0


def shapes_config(kind: str, sizes: tuple[int, int, int] | None = None, image_size: int = 64,
                  seed: int = 0) -> ShapesConfig:
  """The config of `shapes/<kind>`; non-default settings are spelled in its name."""
  if kind not in SHAPES_KINDS:
    raise InputError(f"unknown shapes dataset {kind!r}; known: {SHAPES_KINDS}")
  sizes = tuple(sizes or DEFAULT_SHAPES_SIZES[kind])
  name = kind
  if sizes != DEFAULT_SHAPES_SIZES[kind] or image_size != 64 or seed != 0:
    name = f"{kind}_{image_size}px_{'_'.join(map(str, sizes))}_seed{seed}"
  return ShapesConfig(name=name, kind=kind, sizes=sizes, image_size=image_size, seed=seed,
                      description=f"shapes world: {kind}, {image_size}px, sizes {sizes}")


def _shapes_record(args: tuple[str, str, int, int, int]) -> dict:
  """Everything the shapes datasets store for one (split, index), image PNG-encoded."""
  from mmzoo.data import shapes

  kind, split, index, image_size, seed = args
  world = shapes.WorldConfig(seed=seed, image_size=image_size)
  if kind == "stories":
    story = shapes.story(split, index, world)
    return {
        "story_id": index,
        "images": [images.encode(im) for im in story["images"]],
        "scenes": [s.to_json() for s in story["scenes"]],
        "sentences": {style: list(story["sentences"][style]) for style in shapes.STORY_STYLES},
    }
  ex = shapes.example(split, index, world)
  return {"image": images.encode(ex["image"]), "image_id": index, "scene": ex["scene"],
          "captions": list(ex["captions"]), "questions": list(ex["questions"]),
          "answers": list(ex["answers"]), "question_types": list(ex["question_types"]),
          "personalities": list(ex["comments"]), "comments": list(ex["comments"].values())}


_IMAGE_FIELDS = {
    "captions": ("image", "image_id", "scene", "captions"),
    "vqa": ("image", "image_id", "scene", "captions", "questions", "answers", "question_types"),
    "personality": ("image", "image_id", "scene", "captions", "personalities", "comments"),
}
# Records of the image datasets by (split, index, image_size, seed): captions, vqa and
# personality show the same images, so building all three renders each image once.
_RECORDS: dict[tuple, dict] = {}
_MAX_CACHED = 200_000


def _shapes_examples(kind: str, split: str, n: int, image_size: int, seed: int,
                     workers: int) -> Iterator[tuple[str, dict]]:
  if kind == "stories":
    args = ((kind, split, i, image_size, seed) for i in range(n))
    for i, record in enumerate(_parallel_map(_shapes_record, args, workers)):
      yield f"{split}/{i}", record
    return
  keys = [(split, i, image_size, seed) for i in range(n)]
  missing = [k for k in keys if k not in _RECORDS]
  computed = _parallel_map(_shapes_record, [(kind, *k) for k in missing], workers)
  if len(_RECORDS) + len(missing) > _MAX_CACHED:
    _RECORDS.clear()
  fields = _IMAGE_FIELDS[kind]
  for key in keys:
    record = _RECORDS.get(key)
    if record is None:
      record = _RECORDS[key] = next(computed)
    yield f"{split}/{key[1]}", {f: record[f] for f in fields}


class Shapes(tfds.core.GeneratorBasedBuilder):
  """The built-in shapes world (see `mmzoo.data.shapes`)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Images PNG-encoded by Pillow.",
      "1.1.0": "Same pixels; PNGs with unfiltered rows (`images.encode`), which decode "
               "2.5x faster.",
  }
  BUILDER_CONFIGS = [shapes_config(kind) for kind in SHAPES_KINDS]

  def __init__(self, *, workers: int | None = None, **kwargs):
    self._workers = os.cpu_count() if workers is None else workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    from mmzoo.data import shapes

    size = self.builder_config.image_size
    image = tfds.features.Image(shape=(size, size, 3), encoding_format="png")
    text_list = tfds.features.Sequence(tfds.features.Text())
    kind = self.builder_config.kind
    if kind == "stories":
      features = {
          "story_id": tfds.features.Scalar(np.int64),
          "images": tfds.features.Sequence(image),
          "scenes": text_list,
          "sentences": {style: text_list for style in shapes.STORY_STYLES},
      }
    else:
      features = {"image": image, "image_id": tfds.features.Scalar(np.int64),
                  "scene": tfds.features.Text(), "captions": text_list}
      if kind == "vqa":
        features.update(questions=text_list, answers=text_list, question_types=text_list)
      elif kind == "personality":
        features.update(personalities=text_list, comments=text_list)
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 description=self.builder_config.description)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n)
            for split, n in zip(SPLITS, self.builder_config.sizes, strict=True) if n > 0}

  def _generate_examples(self, split: str, n: int):
    c = self.builder_config
    yield from _shapes_examples(c.kind, split, n, c.image_size, c.seed, self._workers)


def shapes_builder(kind: str = "captions", data_dir: str | None = None, *,
                   sizes: tuple[int, int, int] | None = None, image_size: int = 64,
                   seed: int = 0, workers: int | None = None) -> Shapes:
  config = shapes_config(kind, sizes, image_size, seed)
  if config.name in SHAPES_KINDS:  # TFDS wants its predefined configs by name.
    config = config.name
  return Shapes(config=config, data_dir=data_dir, workers=workers)


# --- real captioned images ----------------------------------------------------------------


def _load_captioned(args: tuple[readers.CaptionedImage, str, int]) -> tuple[dict | None, str]:
  """`(example, "")`, or `(None, reason)` for an image that cannot be used."""
  record, path, size = args
  try:
    pixels = images.load(path, size)
  except InputError as e:
    return None, str(e).removeprefix(f"{path}: ")
  return {"image": images.encode(pixels, "jpeg"), "image_id": str(record.image_id),
          "filename": record.path, "captions": list(record.captions)}, ""


class _CaptionedImages(tfds.core.GeneratorBasedBuilder):
  """Images with captions, read from the user's files; images decoded at build time."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, records: list[readers.CaptionedImage] | None = None,
               images_dir: str | dict[str, str] | None = None, image_size: int = 256,
               bad: readers.BadData | None = None, workers: int | None = None, **kwargs):
    self._records = records or []
    self._images_dir = images_dir
    self._image_size = image_size
    self.bad = bad or readers.BadData()
    self._workers = os.cpu_count() if workers is None else workers
    self.caption_counts: dict[str, int] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self._image_size
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
        "image_id": tfds.features.Text(),
        "filename": tfds.features.Text(),
        "captions": tfds.features.Sequence(tfds.features.Text()),
    }))

  def _image_path(self, record: readers.CaptionedImage) -> str:
    root = self._images_dir
    if isinstance(root, dict):
      root = root.get(record.split, root.get("", ""))
    return os.path.join(root or "", record.path)

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._records:
      raise InputError("no usable images with captions to build a dataset from")
    splits = sorted({r.split for r in self._records})
    return {s: self._generate_examples([r for r in self._records if r.split == s])
            for s in splits}

  def _generate_examples(self, records: list[readers.CaptionedImage]):
    args = ((r, self._image_path(r), self._image_size) for r in records)
    for record, (example, reason) in zip(
        records, _parallel_map(_load_captioned, args, self._workers), strict=True):
      if example is None:
        self.bad(self._image_path(record), reason)
        continue
      self.caption_counts[record.split] = (self.caption_counts.get(record.split, 0)
                                           + len(example["captions"]))
      yield f"{record.split}/{record.image_id}/{record.path}", example


class KarpathyCaptions(_CaptionedImages):
  """A Karpathy-split JSON (dataset_coco / flickr8k / flickr30k) with its images."""


class CocoCaptions(_CaptionedImages):
  """COCO caption annotation files, one per split, with their images."""


def karpathy_builder(annotations: str, images_dir: str, data_dir: str | None = None, *,
                     image_size: int = 256, keep_restval: bool = False, on_bad: str = "fail",
                     max_words: int = 50, workers: int | None = None) -> KarpathyCaptions:
  """`karpathy_captions/<name>`, named after the annotation file (dataset_coco -> coco)."""
  bad = readers.BadData(on_bad)
  records = readers.read_karpathy(annotations, bad, keep_restval=keep_restval,
                                  max_words=max_words)
  stem = os.path.splitext(os.path.basename(annotations))[0].removeprefix("dataset_")
  name = _config_name(f"{stem}_{image_size}px" + ("_restval" if keep_restval else ""))
  return KarpathyCaptions(config=tfds.core.BuilderConfig(name=name), records=records,
                          images_dir=images_dir, image_size=image_size, bad=bad,
                          data_dir=data_dir, workers=workers)


def coco_builder(annotations: dict[str, str], images_dir: dict[str, str] | str,
                 data_dir: str | None = None, *, name: str = "coco", image_size: int = 256,
                 on_bad: str = "fail", max_words: int = 50,
                 workers: int | None = None) -> CocoCaptions:
  """`coco_captions/<name>` from `{split: annotation file}` and images dirs by split."""
  bad = readers.BadData(on_bad)
  records = []
  for split, path in annotations.items():
    records += readers.read_coco_annotations(path, bad, split, max_words=max_words)
  return CocoCaptions(config=tfds.core.BuilderConfig(name=_config_name(f"{name}_{image_size}px")),
                      records=records, images_dir=images_dir, image_size=image_size, bad=bad,
                      data_dir=data_dir, workers=workers)


def summary(builder: tfds.core.GeneratorBasedBuilder) -> dict:
  """`{"splits": {split: n_images}, "captions": {split: n}, "skipped": [...]}`."""
  counts = {split: info.num_examples for split, info in builder.info.splits.items()}
  captions = dict(getattr(builder, "caption_counts", {}))
  if set(captions) != set(counts) and "captions" in builder.info.features:
    source = builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})
    captions = {split: sum(len(data[i]["captions"]) for i in range(len(data)))
                for split, data in source.items()}
  return {"splits": counts, "captions": captions,
          "skipped": list(getattr(getattr(builder, "bad", None), "skipped", []))}
