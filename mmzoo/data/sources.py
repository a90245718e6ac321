"""Captioned-image sources by config: the shapes world, built datasets, precomputed features.

Every multimodal task reads its images and captions through `open_splits`,
whatever their origin, as random-access sequences of records
`{"image": <uint8>[S, S, 3] or <float32>[...] features, "captions": [bytes],
"image_id": ..., "scene": json (shapes only)}`:

- `source="shapes"`: the built-in world, built on first use into `data_dir`
  (process 0 builds, the others wait for it).
- `source="karpathy"` / `"coco"`: a dataset built by `launch/prepare_data.py`,
  found as `data_dir/<karpathy_captions|coco_captions>/<name>`.
- `source="precomp"`: vsepp's precomputed features `{split}_ims.npy` +
  `{split}_caps.txt` in `precomp_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmzoo.data import builders, pipeline, readers
from mmzoo.errors import InputError

SPLITS = ("train", "validation", "test")


def default_data_dir() -> str:
  """`$MMZOO_DATA_DIR`, else `~/.cache/mmzoo/datasets`."""
  return os.environ.get("MMZOO_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "mmzoo", "datasets")


class PrecomputedSplit:
  """vsepp precomputed features as records: image i with its k captions."""

  def __init__(self, features: np.ndarray, captions: Sequence[str], captions_per_image: int):
    self.features = features
    self.captions = captions
    self.k = captions_per_image

  def __len__(self) -> int:
    return len(self.features)

  def __getitem__(self, index: int) -> dict:
    caps = self.captions[index * self.k:(index + 1) * self.k]
    return {"image": self.features[index], "image_id": np.int64(index),
            "captions": [c.encode("utf-8") for c in caps]}


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def shapes_builder(data: ml_collections.ConfigDict, kind: str = "captions"):
  """The shapes dataset of `kind` for a data config, built if it is not yet."""
  builder = builders.shapes_builder(
      kind, data.get("data_dir") or default_data_dir(), sizes=tuple(data.shapes_sizes),
      image_size=data.image_size, seed=data.get("shapes_seed", 0),
      workers=data.get("build_workers") or None)
  if jax.process_index() == 0:
    builders.prepare(builder)
  _sync(f"mmzoo build {builder.data_dir}")
  if jax.process_index() != 0:
    builders.prepare(builder)  # Already built: only reads its metadata.
  return builder


def built_builder(data: ml_collections.ConfigDict):
  """A dataset that `launch/prepare_data.py` built."""
  name = {"karpathy": "karpathy_captions", "coco": "coco_captions"}[data.source]
  root = os.path.join(data.get("data_dir") or default_data_dir(), name, data.name)
  versions = sorted(v for v in os.listdir(root) if v[0].isdigit()) if os.path.isdir(root) else []
  if not versions:
    raise InputError(f"{root}: no built dataset; run launch/prepare_data.py --format="
                     f"{data.source} --data_dir={data.get('data_dir') or default_data_dir()}")
  return tfds.builder_from_directory(os.path.join(root, versions[-1]))


def open_splits(data: ml_collections.ConfigDict, splits: Sequence[str] = SPLITS,
                kind: str = "captions") -> dict[str, Sequence]:
  """Random access to each requested split of the config's captioned images."""
  if data.source == "precomp":
    k = data.get("captions_per_image", 5)
    names = dict(data.get("precomp_splits", {}) or {})
    out = {}
    for split in splits:
      features, captions = readers.read_vsepp_precomp(data.precomp_dir, names.get(split, split),
                                                      k)
      out[split] = PrecomputedSplit(features, captions, k)
    return out
  if data.source == "shapes":
    builder = shapes_builder(data, kind)
  elif data.source in ("karpathy", "coco"):
    builder = built_builder(data)
  else:
    raise InputError(f"unknown data.source {data.source!r}; use shapes, karpathy, coco or "
                     "precomp")
  return {split: pipeline.data_source(builder, split) for split in splits}


def captions_of(source: Sequence, limit: int | None = None) -> list[str]:
  """Every caption of a split's first `limit` images (all by default), as text.

  Reads the captions without decoding images when the source allows it.
  """
  n = len(source) if limit is None else min(limit, len(source))
  text = []
  for i in range(n):
    for c in source[i]["captions"]:
      text.append(c.decode("utf-8") if isinstance(c, bytes) else c)
  return text
