"""Plots of a workdir's results.

  python -m mmzoo.eval.plots curves --workdir=W --out=curve.png [--metric=bpc]

draws the training loss and the validation metric against the step, from
W/metrics.jsonl, and marks the wall-clock minutes when W/metrics.jsonl has them.

  python -m mmzoo.eval.plots embeddings --workdir=W --out=pca.png [--split=test]

draws a joint image-text embedding (VSE, VSE++, order) in its first two principal
components: a split's images as dots coloured by their shapes object's colour (grey
for other data), and words (colours and shapes by default, `--words` otherwise) as
labelled points.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from mmzoo.errors import InputError


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file (is {workdir} a training workdir?)")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str, out: str, metric: str = "bpc", title: str | None = None,
                x: str = "step") -> None:
  """Training loss (in the metric's units where it is bpc) and validation `metric`.

  `x` is "step" or "minutes" (wall-clock since the run started, from `elapsed_s`).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_metrics(workdir)
  train = [r for r in records if r["split"] == "train"]
  val = [r for r in records if r["split"] == "validation" and metric in r]
  if not val:
    raise InputError(f"{workdir}/metrics.jsonl: no validation '{metric}' recorded")
  scale = 1 / math.log(2) if metric == "bpc" else 1.0
  fig, ax = plt.subplots(figsize=(6, 4))
  if x == "minutes":
    if any("elapsed_s" not in r for r in train + val):
      raise InputError(f"{workdir}/metrics.jsonl: records lack elapsed_s; use --x=step")

    def xs(rs):
      return [r["elapsed_s"] / 60 for r in rs]
  else:

    def xs(rs):
      return [r["step"] for r in rs]

  ax.plot(xs(train), [r["loss"] * scale for r in train],
          label=f"train ({metric})" if metric == "bpc" else "train loss", alpha=0.7)
  ax.plot(xs(val), [r[metric] for r in val], "o-", label=f"validation {metric}")
  ax.set_xlabel("wall-clock minutes" if x == "minutes" else "step")
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(title or os.path.basename(os.path.normpath(workdir)))
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def plot_embeddings(workdir: str, out: str, split: str = "test", max_images: int = 500,
                    words: list[str] | None = None) -> None:
  """PCA of a retrieval model's joint space: images and words together."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from mmzoo import tasks
  from mmzoo.train import loop

  task, params, _ = loop.restore_workdir(workdir, tasks.build)
  if not hasattr(task, "encode_text"):
    raise InputError(f"{workdir}: holds a {task.config.task} model, not a joint embedding")
  images = task.split_images(params, split)[:max_images]
  source = task.split(split)
  colours = ["0.6"] * len(images)
  if task.config.data.source == "shapes":
    from mmzoo.data import shapes

    if words is None:
      words = list(shapes.COLOURS) + list(shapes.SHAPES)
    rgb = {c: tuple(v / 255 for v in shapes.RGB[c]) for c in shapes.COLOURS}
    for i in range(len(images)):
      scene = shapes.Scene.from_json(_text(source[i]["scene"]))
      if len(scene.objects) == 1:
        colours[i] = rgb[scene.objects[0].colour]
  words = words or []
  for word in words:
    task.check_words(word)
  word_vectors = task.encode_text(params, words) if words else np.zeros((0, images.shape[1]))
  both = np.concatenate([images, word_vectors])
  centred = both - both[:len(images)].mean(0)
  _, _, vt = np.linalg.svd(centred[:len(images)], full_matrices=False)
  xy = centred @ vt[:2].T
  fig, ax = plt.subplots(figsize=(7, 6))
  ax.scatter(xy[:len(images), 0], xy[:len(images), 1], c=colours, s=12, alpha=0.8,
             edgecolors="0.3", linewidths=0.2,
             label=f"{split} images (one object: its colour; grey: several)")
  ax.scatter(xy[len(images):, 0], xy[len(images):, 1], marker="x", c="black", s=30,
             label="words")
  for word, (x, y) in zip(words, xy[len(images):], strict=True):
    ax.annotate(word, (x, y), fontsize=9, xytext=(3, 3), textcoords="offset points")
  ax.set_xlabel("principal component 1")
  ax.set_ylabel("principal component 2")
  ax.set_title(f"{os.path.basename(os.path.normpath(workdir))}: joint space (PCA of images)")
  ax.legend(loc="best", fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mmzoo.eval.plots")
  sub = parser.add_subparsers(dest="command", required=True)
  curves = sub.add_parser("curves", help="training and validation curves of a workdir")
  curves.add_argument("--workdir", required=True)
  curves.add_argument("--out", required=True)
  curves.add_argument("--metric", default="bpc")
  curves.add_argument("--title", default=None)
  curves.add_argument("--x", choices=("step", "minutes"), default="step")
  embeddings = sub.add_parser("embeddings", help="PCA of a joint image-text space")
  embeddings.add_argument("--workdir", required=True)
  embeddings.add_argument("--out", required=True)
  embeddings.add_argument("--split", default="test")
  embeddings.add_argument("--max_images", type=int, default=500)
  embeddings.add_argument("--words", default=None, help="comma-separated words to place")
  args = parser.parse_args(argv)
  try:
    if args.command == "curves":
      plot_curves(args.workdir, args.out, args.metric, args.title, args.x)
    else:
      plot_embeddings(args.workdir, args.out, args.split, args.max_images,
                      args.words.split(",") if args.words else None)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
