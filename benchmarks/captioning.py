r"""Captioning training throughput: images/s per device and achieved FLOP/s.

  python benchmarks/captioning.py [--models=show_tell,show_attend_tell,updown] [--reps=10]

Each model's default config (`mmzoo/configs/<model>.py`, shapes world, batch 64,
max length 16) runs the trainer's own jitted `loop.train_step` (donated state,
the finite checks, the optimizer) on one fixed batch. Compilation and 2 warm-up
steps are excluded; the median of `--reps` steps is reported, each ended by
`block_until_ready`. FLOPs per step come from XLA's cost analysis of the
compiled step (forward + backward + optimizer), so FLOP/s is what the compiled
program does per second, not a hand count.
"""

import functools
import os
import platform
import statistics
import time

import jax
from absl import app, flags

from mmzoo import tasks
from mmzoo.configs import show_attend_tell, show_tell, updown
from mmzoo.train import loop, parallel

MODELS = flags.DEFINE_list("models", ["show_tell", "show_attend_tell", "updown"],
                           "Configs to time.")
REPS = flags.DEFINE_integer("reps", 10, "Timed steps; the median counts.")
CONFIGS = {"show_tell": show_tell, "show_attend_tell": show_attend_tell, "updown": updown}


def main(argv):
  del argv
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), python {platform.python_version()}, "
        f"jax {jax.__version__}")
  print("| model | batch | ms/step | images/s/device | GFLOP/step | GFLOP/s |")
  print("|---|---:|---:|---:|---:|---:|")
  for name in MODELS.value:
    config = CONFIGS[name].get_config()
    task = tasks.build(config)
    mesh = parallel.make_mesh()
    tx, init_fn, _, shardings = loop.abstract_train_state(task, mesh)
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
    batch = parallel.global_batch(next(task.train_batches()), mesh)
    step = jax.jit(functools.partial(loop.train_step, tx, task.loss_fn),
                   in_shardings=(shardings, parallel.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0))
    for _ in range(2):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(REPS.value):
      start = time.perf_counter()
      state, _ = compiled(state, batch)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    batch_size = config.data.batch_size
    print(f"| {name} | {batch_size} | {1000 * seconds:.0f} | "
          f"{batch_size / seconds / jax.device_count():.0f} | {flops / 1e9:.2f} | "
          f"{flops / seconds / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
