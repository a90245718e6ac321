"""What the benchmarks share about the machine: its CPU's name and how busy it was.

Imported by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is
on the path); it defines no flags, so any of them can use it.
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
