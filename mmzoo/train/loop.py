"""The generic training loop that every task runs.

A task hands the trainer (see `Task`): parameter and task-state init, a loss
function, a data iterator with a saveable state, evaluation, and the
artifacts (e.g. vocabulary) that must travel with checkpoints. The trainer
owns the rest: the mesh and shardings, the jit-compiled train step with
donated state, optax, (sum, count) metrics, logging, periodic evaluation,
orbax checkpoints and resumption, and stopping on a non-finite loss.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmzoo.errors import InputError
from mmzoo.train import checkpoint as ckpt_lib
from mmzoo.train import metrics as metrics_lib
from mmzoo.train import optim, parallel


class DataIterator(Protocol, Iterator[dict]):
  def get_state(self) -> dict: ...

  def set_state(self, state: dict) -> None: ...


class Task(Protocol):
  """What a task gives the trainer."""

  config: ml_collections.ConfigDict
  tokens_per_batch: int  # Global tokens (or examples) per step, for throughput logs.

  def init_params(self, rng: jax.Array) -> Any: ...

  def init_task_state(self) -> Any:
    """State carried across steps besides params, e.g. TBPTT carries.

    Every leaf has the global batch as its leading axis (sharded over 'data').
    """

  def loss_fn(self, params: Any, task_state: Any, batch: Any,
              rng: jax.Array) -> tuple[jax.Array, tuple[metrics_lib.Metrics, Any]]:
    """`loss, (metrics, new_task_state)`; metrics are (sum, count) pairs.

    A third aux entry, `loss, (metrics, new_task_state, replace)`, is a dict of
    subtrees of the params that the step replaces after the optimizer update,
    e.g. `{"batch_stats": ...}` computed in training mode. Such leaves should be
    frozen in `trainable`, so that only the replacement changes them.
    """

  # Optional: `trainable(params) -> pytree of bools`; False leaves get zero updates.

  def train_batches(self) -> DataIterator:
    """This process's share of each global batch, as numpy arrays."""

  def evaluate(self, params: Any, mesh: jax.sharding.Mesh,
               split: str = "validation") -> dict[str, float]: ...

  def artifacts(self) -> dict:
    """JSON saved with each checkpoint (e.g. the vocabulary)."""

  def on_train_end(self, params: Any) -> None: ...


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  task_state: Any
  # -1, or the first step whose loss or gradient norm was NaN or Inf. From that
  # step on, updates are dropped, so the state stays the last good one.
  bad_step: jax.Array


def _init_state(task: Task, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  init_rng, train_rng = jax.random.split(rng)
  params = task.init_params(init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=train_rng, task_state=task.init_task_state(),
                    bad_step=jnp.full((), -1, jnp.int32))


def state_shardings(abstract_state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
  """Everything replicated except the task state, which is split by batch."""
  replicated, by_batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  shardings = jax.tree.map(lambda _: replicated, abstract_state)
  return shardings.replace(task_state=jax.tree.map(lambda _: by_batch,
                                                   abstract_state.task_state))


def abstract_train_state(task: Task, mesh: jax.sharding.Mesh):
  """`(init_fn, abstract state with shardings, shardings)` for a task's config."""
  config = task.config
  tx = optim.make_optimizer(config.optimizer, config.train.num_steps,
                            getattr(task, "trainable", None))
  init_fn = functools.partial(_init_state, task, tx)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  shardings = state_shardings(abstract, mesh)
  return tx, init_fn, ckpt_lib.with_shardings(abstract, shardings), shardings


def train_step(tx: optax.GradientTransformation, loss_fn, state: TrainState, batch: Any):
  """One optimizer step; non-finite steps leave the state as it was."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss(params):
    return loss_fn(params, state.task_state, batch, rng)

  (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  metrics, task_state = aux[:2]
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if len(aux) > 2:
    params = {**params, **aux[2]}
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(value) & jnp.isfinite(grad_norm) & (state.bad_step < 0)
  keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(ok, new, old))
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      task_state=keep(task_state, state.task_state),
      bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step))
  metrics = dict(metrics, grad_norm=(grad_norm, jnp.ones((), jnp.float32)))
  return new_state, metrics


def _check_finite(state: TrainState, workdir: str, last_saved: int | None) -> None:
  bad_step = int(jax.device_get(state.bad_step))
  if bad_step >= 0:
    kept = (f"the last good checkpoint (step {last_saved}) is kept in {workdir}"
            if last_saved is not None else "no checkpoint had been saved yet")
    raise FloatingPointError(f"loss or gradient is NaN or Inf at step {bad_step}; "
                             f"training stopped and {kept}")


def train_and_evaluate(task: Task, workdir: str) -> dict[str, float]:
  """Trains `task` in `workdir`, resuming from its latest checkpoint if any.

  Returns the final evaluation metrics.
  """
  config = task.config
  cfg = config.train
  mesh = parallel.make_mesh()
  is_primary = jax.process_index() == 0
  logging.info("training on %d devices (%d processes), mesh %s", jax.device_count(),
               jax.process_count(), dict(mesh.shape))
  tx, init_fn, abstract, shardings = abstract_train_state(task, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=cfg.keep_checkpoints)
  best_metric = cfg.get("best_metric", "")
  best = (ckpt_lib.Checkpointer(workdir, which="best", best_metric=best_metric,
                                best_mode=cfg.get("best_mode", "max")) if best_metric else None)
  batches = task.train_batches()
  last_saved = checkpointer.latest_step()
  if last_saved is not None:
    checkpointer.check_compatible(config, task.artifacts())
    state, data_state = checkpointer.restore(abstract, last_saved)
    batches.set_state(data_state)
    logging.info("resumed from %s at step %d", checkpointer.directory, last_saved)
  else:
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
    if cfg.get("init_from"):
      # A warm start (e.g. self-critical training after cross-entropy): the params of
      # another run's best (or latest) checkpoint; optimizer and step start afresh.
      params = restore_params(task, cfg.init_from, which=None)
      state = state.replace(params=params)
      logging.info("initialised params from %s", cfg.init_from)

  step_fn = jax.jit(functools.partial(train_step, tx, task.loss_fn),
                    in_shardings=(shardings, parallel.batch_sharding(mesh)),
                    out_shardings=(shardings, None), donate_argnums=0)
  writer = metrics_lib.MetricWriter(workdir)
  step = int(jax.device_get(state.step))
  eval_results: dict[str, float] = {}
  start_step = step
  totals, t_last, step_last = None, time.perf_counter(), step
  t_start = t_last
  in_flight = parallel.InFlight()
  try:
    while step < cfg.num_steps:
      batch = parallel.global_batch(next(batches), mesh)
      state, step_metrics = step_fn(state, batch)
      in_flight.admit(step_metrics)
      totals = metrics_lib.accumulate(totals, step_metrics)
      step += 1
      last = step == cfg.num_steps
      if step == start_step + 1 and step % cfg.log_every and not last:
        # Throughput excludes the first step, which includes compilation.
        jax.block_until_ready(state)
        t_last, step_last = time.perf_counter(), step
      if step % cfg.log_every == 0 or last:
        _check_finite(state, workdir, last_saved)
        values = metrics_lib.normalize(totals)
        elapsed = time.perf_counter() - t_last
        rate = (step - step_last) / elapsed
        values.update(steps_per_s=rate, tokens_per_s=rate * task.tokens_per_batch,
                      elapsed_s=time.perf_counter() - t_start)
        writer.write(step, "train", values)
        if is_primary:
          eta = (cfg.num_steps - step) / rate
          logging.info("step %d/%d  loss %.4f  %.2f steps/s  %.0f tokens/s  ETA %s", step,
                       cfg.num_steps, values["loss"], rate, values["tokens_per_s"],
                       time.strftime("%H:%M:%S", time.gmtime(eta)))
        totals, t_last, step_last = None, time.perf_counter(), step
      if step % cfg.eval_every == 0 or last:
        _check_finite(state, workdir, last_saved)
        eval_results = task.evaluate(state.params, mesh)
        writer.write(step, "validation",
                     dict(eval_results, elapsed_s=time.perf_counter() - t_start))
        if is_primary:
          logging.info("step %d validation %s", step,
                       "  ".join(f"{k} {v:.4f}" for k, v in eval_results.items()))
        if best is not None:
          if best_metric not in eval_results:
            raise InputError(f"train.best_metric {best_metric!r} is not among the evaluation "
                             f"results {sorted(eval_results)}")
          if step > (best.latest_step() or 0):  # A resumed run may re-evaluate a saved step.
            best.save(step, state, batches.get_state(), config, task.artifacts(), eval_results)
        t_last = time.perf_counter()  # Evaluation time is not training time.
      if step % cfg.checkpoint_every == 0 or last:
        _check_finite(state, workdir, last_saved)
        checkpointer.save(step, state, batches.get_state(), config, task.artifacts())
        last_saved = step
  finally:
    checkpointer.close()
    if best is not None:
      best.close()
    writer.close()
  if not eval_results:  # Resumed at the end: nothing left to train.
    eval_results = task.evaluate(state.params, mesh)
  task.on_train_end(state.params)
  return eval_results


def default_checkpoints(workdir: str) -> str:
  """"best" when the run kept a best checkpoint (`train.best_metric`), else "latest"."""
  return "best" if os.path.isdir(ckpt_lib.checkpoint_dir(workdir, "best")) else "latest"


def restore_params(task: Task, workdir: str, step: int | None = None,
                   which: str | None = "latest") -> Any:
  """The parameters of a workdir's latest (or given, or best) checkpoint, on this mesh.

  `which=None` takes `default_checkpoints(workdir)`.
  """
  which = which or default_checkpoints(workdir)
  mesh = parallel.make_mesh()
  _, _, abstract, _ = abstract_train_state(task, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True, which=which)
  try:
    state, _ = checkpointer.restore(abstract, step)
  finally:
    checkpointer.close()
  return state.params


def restore_workdir(workdir: str, build_task: Callable[..., Task], step: int | None = None,
                    which: str | None = None,
                    overrides: dict[str, Any] | None = None) -> tuple[Task, Any, int]:
  """Rebuilds `(task, params, step)` from a workdir alone.

  `build_task(config, artifacts)` makes the task from the checkpoint's config
  and artifacts (e.g. `mmzoo.tasks.build`). `which` is "latest" or "best";
  None means the best when the run kept one (`train.best_metric`), else the latest.
  `overrides` (`{"section.field": value}`) change the restored config, e.g. the
  evaluation's beam size.
  """
  which = which or default_checkpoints(workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True, which=which)
  try:
    step = checkpointer.resolve_step(step)
    config = ml_collections.ConfigDict(checkpointer.load_config(step))
    for key, value in (overrides or {}).items():  # Evaluation-time settings, e.g. beam size.
      section, name = key.split(".")
      config[section][name] = value
    task = build_task(config, checkpointer.load_artifacts(step))
  finally:
    checkpointer.close()
  return task, restore_params(task, workdir, step, which), step
