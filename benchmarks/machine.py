"""What the benchmarks share about the machine: its CPU's name and how busy it was.

Imported by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is
on the path); it defines no flags on import (`retain_memory_flag` defines one when a
benchmark calls it), so any of them can use it.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable


def cpu_name() -> str:
  """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def retain_memory_flag():
  """Defines --retain_freed_memory, the launchers' flag of that name, for a benchmark."""
  from absl import flags
  return flags.DEFINE_bool(
      "retain_freed_memory", True, "As the launchers' flag: keep freed host memory for "
      "reuse (glibc malloc), for both frameworks in this process.")


def host_memory_policy(retain: bool) -> str:
  """Applies the launchers' default host memory policy when `retain`; says which holds.

  It is process-wide, so it holds for every framework a benchmark runs side by side.
  """
  if retain:
    from mmzoo.train import host_memory
    if host_memory.retain_freed_memory():
      return "freed memory retained (glibc malloc, as the launchers; all frameworks)"
    return "malloc's defaults (not glibc: nothing to retain)"
  return "malloc's defaults (--noretain_freed_memory)"


def busy_cpu_s() -> tuple[float, float]:
  """(CPU seconds the whole machine was busy, of which this process), so far."""
  own = sum(os.times()[:2])
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return own, own
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own


def timed(run: Callable[[], object]) -> tuple[float, float]:
  """(milliseconds of one call of `run`, cores other processes kept busy meanwhile)."""
  busy0, own0 = busy_cpu_s()
  start = time.perf_counter()
  run()
  wall = time.perf_counter() - start
  busy1, own1 = busy_cpu_s()
  return wall * 1e3, max(0.0, (busy1 - busy0) - (own1 - own0)) / wall


def alternating(runs: dict[str, Callable[[], object]], reps: int, rounds: int
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """Times `reps` calls of every run, in `rounds` blocks that alternate between the runs.

  A slow spell of a shared machine then hits every run, and each block starts after
  one untimed call, so that no timed call follows the other framework's (whose
  worker threads may still be spinning). Returns `(milliseconds, other processes'
  busy cores)`, one list per run.
  """
  times = {name: [] for name in runs}
  others = {name: [] for name in runs}
  rounds = max(1, min(rounds, reps))
  for r in range(rounds):
    block = reps // rounds + (r < reps % rounds)
    for name, run in runs.items():
      run()  # untimed: lets the other framework's threads go idle first
      for _ in range(block):
        ms, busy = timed(run)
        times[name].append(ms)
        others[name].append(busy)
  return times, others
