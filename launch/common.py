"""What every launcher shares: multi-host flags and clean error exits."""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from mmzoo.errors import InputError
from mmzoo.train import parallel

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a multi-process job.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 30, "Seconds after which a silent peer process fails the job.")


def initialize_distributed() -> None:
  parallel.initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
                                  HEARTBEAT.value)


class _DropLibraryChatter:
  """Keeps orbax's per-save INFO lines out of the training log."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or "/orbax/" not in record.pathname


def run(main) -> None:
  """`app.run(main)`, printing input problems as one line and exiting 1."""

  def checked_main(argv):
    logging.get_absl_handler().addFilter(_DropLibraryChatter())
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
      return main(argv)
    except (InputError, FloatingPointError) as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      os._exit(1)  # Skips atexit hooks that could block on a dead peer process.

  app.run(checked_main)
