"""Readers for real datasets' file formats; they need no building.

- Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr8k.json`,
  `dataset_flickr30k.json`): `{"images": [{"filename", "filepath"?, "split",
  "sentences": [{"raw", "tokens"}], "cocoid" | "imgid"}]}`.
- COCO caption annotations: `{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}`.
- COCO results-format predictions: `[{"image_id", "caption"}]`.
- vsepp's precomputed features: `{split}_ims.npy` + `{split}_caps.txt`, five
  captions per image (the image rows may also be repeated once per caption).
- Precomputed features per image, `.npy` or `.npz`: a pooled vector `[D]`,
  regions `[K, D]` or a grid `[H, W, D]`.

Problems with single records (a missing caption, an empty one) go to a
`BadData` policy: `fail` stops at the first with one line naming the file and
the problem; `skip` leaves the record out and reports it. Problems with a whole
file (missing, not JSON, the wrong layout) always stop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from mmzoo.errors import InputError

KARPATHY_SPLITS = ("train", "val", "test", "restval")


class BadData:
  """What to do with a bad record: `fail` (raise at once) or `skip` (record and go on)."""

  def __init__(self, on_bad: str = "fail"):
    if on_bad not in ("skip", "fail"):
      raise ValueError(f"on_bad must be skip or fail, not {on_bad!r}")
    self.on_bad = on_bad
    self.skipped: list[dict[str, str]] = []
    self.truncated = 0

  def __call__(self, file: str, reason: str) -> None:
    if self.on_bad == "fail":
      raise InputError(f"{file}: {reason}")
    logging.warning("skipped %s: %s", file, reason)
    self.skipped.append({"file": file, "reason": reason})


def read_text(path: str) -> str:
  """A UTF-8 file's text; invalid bytes are replaced, with a warning naming the file."""
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, not a file")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    logging.warning("%s: invalid UTF-8 at byte %d; undecodable bytes replaced by U+FFFD",
                    path, e.start)
    return raw.decode("utf-8", errors="replace")


def read_json(path: str) -> Any:
  text = read_text(path)
  if not text.strip():
    raise InputError(f"{path}: empty file, expected JSON")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _caption_text(caption: Any, max_words: int | None, bad: BadData, where: str) -> str | None:
  """A caption as one line of text, truncated to `max_words`; None if it is empty."""
  if not isinstance(caption, str):
    return None
  words = caption.split()
  if not words:
    return None
  if max_words and len(words) > max_words:
    logging.warning("%s: a caption of %d words truncated to %d", where, len(words), max_words)
    bad.truncated += 1
    words = words[:max_words]
  return " ".join(words)


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
  image_id: int | str
  path: str            # relative to the images directory
  split: str
  captions: tuple[str, ...]


def read_karpathy(path: str, bad: BadData | None = None, *, keep_restval: bool = False,
                  max_words: int | None = None) -> list[CaptionedImage]:
  """A Karpathy-split JSON: splits train/validation/test, `restval` folded into train.

  With `keep_restval` the restval images keep a split of their own. Captions use
  `raw` (or the joined `tokens` when `raw` is absent), truncated to `max_words`.
  """
  bad = bad or BadData()
  data = read_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise InputError(f"{path}: not a Karpathy-split file (no \"images\" list)")
  split_names = {"train": "train", "val": "validation", "test": "test",
                 "restval": "restval" if keep_restval else "train"}
  out = []
  for n, entry in enumerate(data["images"]):
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
      bad(path, f"images[{n}]: no \"filename\"")
      continue
    where = f"{path}: {entry['filename']}"
    if entry.get("split") not in KARPATHY_SPLITS:
      bad(path, f"{entry['filename']}: split {entry.get('split')!r} is not one of "
          f"{KARPATHY_SPLITS}")
      continue
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
      bad(path, f"{entry['filename']}: no captions (\"sentences\" missing or empty)")
      continue
    captions = []
    for s in sentences:
      raw = s.get("raw") if isinstance(s, dict) else None
      if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
        raw = " ".join(map(str, s["tokens"]))
      text = _caption_text(raw, max_words, bad, where)
      if text is None:
        bad(path, f"{entry['filename']}: a caption is missing or empty")
        continue
      captions.append(text)
    if not captions:
      continue
    image_id = entry.get("cocoid", entry.get("imgid", n))
    rel = os.path.join(entry.get("filepath", ""), entry["filename"])
    out.append(CaptionedImage(image_id, rel, split_names[entry["split"]], tuple(captions)))
  return out


def read_coco_annotations(path: str, bad: BadData | None = None, split: str = "train", *,
                          max_words: int | None = None) -> list[CaptionedImage]:
  """COCO caption annotations; every image listed in "images" with its captions."""
  bad = bad or BadData()
  data = read_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
    raise InputError(f"{path}: not a COCO caption file (no \"annotations\" list)")
  captions: dict[Any, list[str]] = {}
  for n, ann in enumerate(data["annotations"]):
    if not isinstance(ann, dict) or "image_id" not in ann:
      bad(path, f"annotations[{n}]: no \"image_id\"")
      continue
    text = _caption_text(ann.get("caption"), max_words, bad, f"{path}: annotations[{n}]")
    if text is None:
      bad(path, f"annotations[{n}] (image {ann['image_id']}): " + (
          "caption is missing or empty" if "caption" in ann else "no \"caption\" key"))
      continue
    captions.setdefault(ann["image_id"], []).append(text)
  images = data.get("images")
  if not isinstance(images, list):
    raise InputError(f"{path}: no \"images\" list to find the image files")
  out = []
  for n, image in enumerate(images):
    if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
      bad(path, f"images[{n}]: needs \"id\" and \"file_name\"")
      continue
    if image["id"] not in captions:
      bad(path, f"{image['file_name']}: image has no captions")
      continue
    out.append(CaptionedImage(image["id"], image["file_name"], split,
                              tuple(captions[image["id"]])))
  return out


def caption_references(path: str) -> dict[str, list[str]]:
  """References by image id (as a string) from a COCO caption file or `{id: [captions]}`."""
  data = read_json(path)
  refs: dict[str, list[str]] = {}
  if isinstance(data, dict) and "annotations" in data:
    if not isinstance(data["annotations"], list):
      raise InputError(f"{path}: \"annotations\" is not a list")
    for n, ann in enumerate(data["annotations"]):
      if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(
          ann.get("caption"), str):
        raise InputError(f"{path}: annotations[{n}] needs \"image_id\" and a string \"caption\"")
      refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
  elif isinstance(data, dict):
    for key, value in data.items():
      if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise InputError(f"{path}: image {key}: expected a list of caption strings")
      refs[str(key)] = list(value)
  else:
    raise InputError(f"{path}: expected a COCO caption file or {{image_id: [captions]}}")
  return refs


def caption_predictions(path: str) -> dict[str, str]:
  """One caption per image id (as a string), from COCO results format or `{id: [caption]}`."""
  data = read_json(path)
  preds: dict[str, str] = {}
  if isinstance(data, list):
    for n, item in enumerate(data):
      if not isinstance(item, dict) or "image_id" not in item or not isinstance(
          item.get("caption"), str):
        raise InputError(f"{path}: entry {n} needs \"image_id\" and a string \"caption\"")
      key = str(item["image_id"])
      if key in preds:
        raise InputError(f"{path}: image {key} has more than one prediction")
      preds[key] = item["caption"]
  elif isinstance(data, dict):
    for key, value in data.items():
      if isinstance(value, str):
        value = [value]
      if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], str):
        raise InputError(f"{path}: image {key}: expected exactly one caption")
      preds[str(key)] = value[0]
  else:
    raise InputError(f"{path}: expected COCO results ([{{image_id, caption}}]) "
                     "or {image_id: [caption]}")
  return preds


def read_vsepp_precomp(data_dir: str, split: str,
                       captions_per_image: int = 5) -> tuple[np.ndarray, list[str]]:
  """vsepp's precomputed layout: `(<float32>[N, ...] images, 5N captions)`.

  Caption i belongs to image i // captions_per_image. Image rows repeated once per
  caption (vsepp's `im_div` = 1 case) are reduced to one row per image.
  """
  ims_path = os.path.join(data_dir, f"{split}_ims.npy")
  caps_path = os.path.join(data_dir, f"{split}_caps.txt")
  if not os.path.exists(ims_path):
    raise InputError(f"{ims_path}: no such file")
  try:
    images = np.load(ims_path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError) as e:
    raise InputError(f"{ims_path}: not a readable .npy array ({e})") from None
  captions = [line.strip() for line in read_text(caps_path).splitlines()]
  while captions and not captions[-1]:
    captions.pop()
  if any(not c for c in captions):
    raise InputError(f"{caps_path}: line {captions.index('') + 1} is empty")
  k = captions_per_image
  if len(captions) % k:
    raise InputError(f"{caps_path}: {len(captions)} captions is not a multiple of {k}")
  if images.shape[0] == len(captions) and k > 1:
    images = images[::k]
  if images.shape[0] * k != len(captions):
    raise InputError(f"{ims_path}: {images.shape[0]} images for {len(captions)} captions in "
                     f"{caps_path}; expected {k} captions per image")
  return np.asarray(images, dtype=np.float32), captions


def read_features(path: str) -> np.ndarray:
  """One image's precomputed features: `[D]`, `[K, D]` regions or `[H, W, D]` grid.

  An `.npz` holds one array, or several of which `features` (or `x`) is taken.
  """
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  try:
    loaded = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise InputError(f"{path}: not a readable .npy/.npz file ({str(e).splitlines()[0]})") from None
  if isinstance(loaded, np.lib.npyio.NpzFile):
    with loaded:
      names = loaded.files
      name = next((n for n in ("features", "x") if n in names), names[0] if len(names) == 1
                  else None)
      if name is None:
        raise InputError(f"{path}: holds arrays {names}; expected one, or one named features")
      loaded = loaded[name]
  if loaded.ndim not in (1, 2, 3) or loaded.size == 0:
    raise InputError(f"{path}: features of shape {loaded.shape}; expected [D], [K, D] or "
                     "[H, W, D]")
  if not np.issubdtype(loaded.dtype, np.floating):
    raise InputError(f"{path}: features of dtype {loaded.dtype}; expected floats")
  if not np.all(np.isfinite(loaded)):
    raise InputError(f"{path}: features hold NaN or Inf")
  return np.asarray(loaded, dtype=np.float32)
