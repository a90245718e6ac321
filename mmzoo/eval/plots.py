"""Plots of a workdir's results.

  python -m mmzoo.eval.plots curves --workdir=W --out=curve.png [--metric=bpc]

draws the training loss and the validation metric against the step, from
W/metrics.jsonl, and marks the wall-clock minutes when W/metrics.jsonl has them.
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


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mmzoo.eval.plots")
  sub = parser.add_subparsers(dest="command", required=True)
  curves = sub.add_parser("curves", help="training and validation curves of a workdir")
  curves.add_argument("--workdir", required=True)
  curves.add_argument("--out", required=True)
  curves.add_argument("--metric", default="bpc")
  curves.add_argument("--title", default=None)
  curves.add_argument("--x", choices=("step", "minutes"), default="step")
  args = parser.parse_args(argv)
  try:
    plot_curves(args.workdir, args.out, args.metric, args.title, args.x)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
