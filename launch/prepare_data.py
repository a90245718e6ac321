r"""Builds a dataset as TFDS array_record files and writes a summary of what went in.

  python launch/prepare_data.py --format=shapes --data_dir=OUT
  python launch/prepare_data.py --format=karpathy --annotations=dataset_coco.json \
      --images_dir=COCO_ROOT --data_dir=OUT [--on_bad=skip|fail]
  python launch/prepare_data.py --format=coco \
      --annotations=train=captions_train2014.json,validation=captions_val2014.json \
      --images_dir=train=COCO/train2014,validation=COCO/val2014 --data_dir=OUT

For Karpathy JSON each image is `images_dir/filepath/filename`; for COCO JSON
`images_dir/file_name` (a single `FILE` or `DIR` stands for the train split and
all splits, respectively). Writes OUT/<dataset name>/summary.json:
  {"splits": {split: n_images}, "captions": {split: n_captions},
   "skipped": [{"file": ..., "reason": ...}], "truncated_captions": n}

--on_bad=fail (the default) stops at the first unreadable or missing image or
missing or empty caption with one line naming the file; --on_bad=skip leaves
such records out and lists them under "skipped". Captions longer than
--max_words are truncated either way (and counted); invalid UTF-8 is decoded
with a warning naming the file.
"""

import json
import os

import common  # noqa: F401  (the clean one-line error exit)
from absl import flags, logging

from mmzoo.data import builders
from mmzoo.errors import InputError

_FORMAT = flags.DEFINE_enum("format", "shapes", ["shapes", "karpathy", "coco"],
                            "What to build.")
_ANNOTATIONS = flags.DEFINE_string(
    "annotations", None, "Karpathy JSON, or COCO caption JSON (`FILE` or `split=FILE,...`).")
_IMAGES_DIR = flags.DEFINE_string(
    "images_dir", None, "Root the annotations' image paths resolve under (`DIR` or "
    "`split=DIR,...` for COCO).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the dataset is written.",
                                required=True)
_ON_BAD = flags.DEFINE_enum("on_bad", "fail", ["skip", "fail"],
                            "What a bad image or caption does: skip it, or stop.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None,
                                   "Stored image size (default 64 for shapes, 256 otherwise).")
_MAX_WORDS = flags.DEFINE_integer("max_words", 50, "Longer captions are truncated.")
_KEEP_RESTVAL = flags.DEFINE_bool("keep_restval", False,
                                  "Karpathy: keep restval as its own split, not in train.")
_KINDS = flags.DEFINE_list("shapes_kinds", list(builders.SHAPES_KINDS),
                           "Shapes: which datasets to build.")
_SIZES = flags.DEFINE_list("shapes_sizes", None,
                           "Shapes: train,validation,test image counts (default per kind).")
_SEED = flags.DEFINE_integer("shapes_seed", 0, "Shapes: the world's seed.")
_WORKERS = flags.DEFINE_integer("workers", None, "Worker processes (default: all cores).")


def _by_split(value: str | None, flag: str, default_split: str) -> dict[str, str]:
  if not value:
    raise InputError(f"--{flag} is required for --format={_FORMAT.value}")
  if "=" not in value:
    return {default_split: value}
  pairs = {}
  for item in value.split(","):
    split, _, path = item.partition("=")
    if not path:
      raise InputError(f"--{flag}: {item!r} is not split=PATH")
    pairs[split.strip()] = path.strip()
  return pairs


def _check_exists(paths: dict[str, str], what: str) -> None:
  for path in paths.values():
    if not os.path.exists(path):
      raise InputError(f"{path}: no such {what}")


def _write_summary(out_dir: str, summary: dict) -> None:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "summary.json")
  with open(path, "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}
                   | {"skipped": len(summary["skipped"]), "summary": path}), flush=True)


def main(argv):
  del argv
  data_dir, fmt = _DATA_DIR.value, _FORMAT.value
  if fmt == "shapes":
    sizes = tuple(int(n) for n in _SIZES.value) if _SIZES.value else None
    if sizes is not None and len(sizes) != 3:
      raise InputError("--shapes_sizes needs three counts: train,validation,test")
    per_kind = {}
    for kind in _KINDS.value:
      builder = builders.prepare(builders.shapes_builder(
          kind, data_dir, sizes=sizes, image_size=_IMAGE_SIZE.value or 64, seed=_SEED.value,
          workers=_WORKERS.value))
      per_kind[kind] = builders.summary(builder)
      logging.info("built %s", builder.data_dir)
    first = per_kind[_KINDS.value[0]]
    _write_summary(os.path.join(data_dir, "shapes"), {**first, "truncated_captions": 0,
                                                      "datasets": per_kind})
    return
  images_dir = _by_split(_IMAGES_DIR.value, "images_dir", "")
  _check_exists(images_dir, "images directory")
  size = _IMAGE_SIZE.value or 256
  if fmt == "karpathy":
    annotations = _by_split(_ANNOTATIONS.value, "annotations", "train")
    _check_exists(annotations, "annotation file")
    builder = builders.karpathy_builder(
        next(iter(annotations.values())), images_dir.get("", next(iter(images_dir.values()))),
        data_dir, image_size=size, keep_restval=_KEEP_RESTVAL.value, on_bad=_ON_BAD.value,
        max_words=_MAX_WORDS.value, workers=_WORKERS.value)
  else:
    annotations = _by_split(_ANNOTATIONS.value, "annotations", "train")
    _check_exists(annotations, "annotation file")
    builder = builders.coco_builder(annotations, images_dir, data_dir, image_size=size,
                                    on_bad=_ON_BAD.value, max_words=_MAX_WORDS.value,
                                    workers=_WORKERS.value)
  builders.prepare(builder)
  summary = builders.summary(builder)
  summary["truncated_captions"] = builder.bad.truncated
  _write_summary(os.path.join(data_dir, builder.name), summary)


if __name__ == "__main__":
  common.run(main)
