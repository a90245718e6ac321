"""Optimizers and learning-rate schedules from config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then constant, cosine or exponential decay.

  `drop_step` > 0 multiplies the rate by `drop_factor` from that step on (VSE++'s
  tenfold drop; there it coincides with the switch to hardest negatives).
  """
  lr, warmup = config.learning_rate, config.get("warmup_steps", 0)
  if config.schedule == "constant":
    decay = optax.constant_schedule(lr)
  elif config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1))
  elif config.schedule == "exponential":
    decay = optax.exponential_decay(lr, config.decay_steps, config.decay_rate)
  else:
    raise ValueError(f"unknown schedule {config.schedule!r}")
  schedule = (decay if not warmup else optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), decay], [warmup]))
  drop = config.get("drop_step", 0)
  if not drop:
    return schedule
  factor = config.get("drop_factor", 0.1)
  return lambda step: schedule(step) * jnp.where(step < drop, 1.0, factor)


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int,
                   trainable=None) -> optax.GradientTransformation:
  """Gradient clipping (by value and/or global norm) followed by the optimizer.

  `trainable`, a pytree of bools shaped like the params (or a function of the
  params giving one), freezes the False leaves: their updates are zero whatever
  the optimizer (weight decay included), e.g. a frozen image encoder or
  BatchNorm statistics.
  """
  lr = learning_rate_schedule(config, num_steps)
  name, eps = config.name, config.get("eps", 1e-8)
  if name == "adam":
    opt = optax.adam(lr, eps=eps)
  elif name == "adamw":
    opt = optax.adamw(lr, eps=eps, weight_decay=config.weight_decay)
  elif name == "rmsprop":
    opt = optax.rmsprop(lr, decay=0.95, eps=eps)
  elif name == "adagrad":
    opt = optax.adagrad(lr, initial_accumulator_value=config.initial_accumulator, eps=eps)
  elif name == "sgd":
    opt = optax.sgd(lr, momentum=config.get("momentum", None))
  else:
    raise ValueError(f"unknown optimizer {name!r}")
  chain = []
  if config.get("clip_value", 0.0):
    chain.append(optax.clip(config.clip_value))
  if config.get("clip_norm", 0.0):
    chain.append(optax.clip_by_global_norm(config.clip_norm))
  tx = optax.chain(*chain, opt)
  if trainable is None:
    return tx
  label = lambda params: jax.tree.map(  # noqa: E731
      lambda t: "train" if t else "freeze", trainable(params) if callable(trainable) else trainable)
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, label)
