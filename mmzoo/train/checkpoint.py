"""Orbax checkpoints of a workdir.

`workdir/checkpoints/<step>/` holds, per saved step:
  state      the train state (params, optimizer state, RNG, task state)
  data       the data iterator's state, so a resumed run sees the same batches
  config     the run's config as JSON
  artifacts  what the task needs to rebuild itself, e.g. the vocabulary

Restores target abstract shapes with shardings (`jax.eval_shape`), so any mesh
can load any checkpoint, and evaluation can rebuild a run from its workdir
alone (`load_config`, `load_artifacts`, `restore_params`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from mmzoo.errors import InputError

# Config sections that fix the shapes and meaning of what a checkpoint holds.
COMPATIBILITY_SECTIONS = ("task", "model", "data", "optimizer")


def checkpoint_dir(workdir: str, which: str = "latest") -> str:
  """`workdir/checkpoints` (the latest N) or `workdir/best` (the best by a metric)."""
  if which not in ("latest", "best"):
    raise ValueError(f"which must be latest or best, not {which!r}")
  return os.path.join(os.path.abspath(workdir), "checkpoints" if which == "latest" else "best")


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  """A JSON-safe copy (tuples become lists, as they do after a round trip)."""
  return json.loads(config.to_json())


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
  return out


def config_differences(saved: dict, current: dict,
                       sections: tuple[str, ...] = COMPATIBILITY_SECTIONS) -> list[str]:
  """`key: saved vs current` for every differing field of `sections`."""
  diffs = []
  for section in sections:
    a, b = _flatten(saved.get(section), section), _flatten(current.get(section), section)
    for key in sorted(set(a) | set(b)):
      if a.get(key, "<absent>") != b.get(key, "<absent>"):
        diffs.append(f"{key}: {a.get(key, '<absent>')!r} in checkpoint vs "
                     f"{b.get(key, '<absent>')!r} now")
  return diffs


def with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


class Checkpointer:
  """Saves and restores a training run's checkpoints (async).

  `which="latest"` keeps the latest `keep` steps under `workdir/checkpoints`;
  `which="best"` keeps, under `workdir/best`, the one step whose evaluation had
  the highest (`best_mode="max"`) or lowest `best_metric`.
  """

  def __init__(self, workdir: str, keep: int = 3, *, read_only: bool = False,
               which: str = "latest", best_metric: str | None = None, best_mode: str = "max"):
    self.directory = checkpoint_dir(workdir, which)
    if read_only and not os.path.isdir(self.directory):
      raise InputError(f"{workdir}: no checkpoints (expected {self.directory})")
    best = {}
    if which == "best" and not read_only:
      if not best_metric:
        raise ValueError("a best checkpoint needs best_metric")
      keep = 1
      best = dict(best_fn=lambda metrics: float(metrics[best_metric]), best_mode=best_mode)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only,
        **best)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=("state", "data", "config", "artifacts"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, config: ml_collections.ConfigDict,
           artifacts: dict, metrics: dict[str, float] | None = None) -> None:
    self.manager.save(step, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config_to_json(config)),
        artifacts=ocp.args.JsonSave(artifacts)))

  def _json_item(self, step: int, name: str) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.JsonRestore()}))[name]

  def load_config(self, step: int | None = None) -> dict:
    return self._json_item(self.resolve_step(step), "config")

  def load_artifacts(self, step: int | None = None) -> dict:
    return self._json_item(self.resolve_step(step), "artifacts")

  def resolve_step(self, step: int | None) -> int:
    """`step`, or the latest when None; an error if there is none."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise InputError(f"{self.directory}: holds no checkpoint")
    return step

  def check_compatible(self, config: ml_collections.ConfigDict, artifacts: dict) -> None:
    """Refuses to resume from a checkpoint written under another config."""
    step = self.resolve_step(None)
    diffs = config_differences(self.load_config(step), config_to_json(config))
    if not diffs and self.load_artifacts(step) != json.loads(json.dumps(artifacts)):
      diffs = ["the vocabulary differs"]
    if diffs:
      raise InputError(
          f"{self.directory}: holds a checkpoint (step {step}) of an incompatible config "
          f"({'; '.join(diffs[:5])}{'; ...' if len(diffs) > 5 else ''}); "
          "use a new --workdir to start afresh")

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores `(state, data_state)` into `abstract_state` (shapes + shardings)."""
    step = self.resolve_step(step)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(f"{self.directory}: checkpoint at step {step} does not fit this "
                       f"config's model: {str(e).splitlines()[0]}") from e
    return restored["state"], restored["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, from its latest checkpoint."""
  ckpt = Checkpointer(workdir, read_only=True)
  return ml_collections.ConfigDict(ckpt.load_config(step))
