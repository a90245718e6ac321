"""What every launcher shares: multi-host flags and clean error exits."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence

import jax
from absl import app, flags, logging

from mmzoo.errors import InputError
from mmzoo.train import host_memory, parallel

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a multi-process job.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 30, "Seconds after which a silent peer process fails the job.")
CPU_DEVICES = flags.DEFINE_string(
    "cpu_devices", "auto", "CPU hosts: run the CPU as this many single-threaded XLA devices "
    "(one per core), data-parallel; 0 or 1 keeps one device on all cores. 'auto' splits in "
    "launchers whose models gain from it (char_rnn: 1.2-1.4x on 2 cores) into one device "
    "per core that the batch sizes divide into, and keeps one device in the others "
    "(captioning ran 0.78x split). See benchmarks/RESULTS.md.")

RETAIN_MEMORY = flags.DEFINE_bool(
    "retain_freed_memory", True, "Keep freed host memory for reuse (glibc malloc: no mmap'd "
    "blocks, no trimming) rather than page-faulting each step's buffers in afresh: 7-18% "
    "of a char_rnn step on CPU. The process keeps its peak heap. See "
    "mmzoo/train/host_memory.py.")


def initialize_distributed() -> None:
  parallel.initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
                                  HEARTBEAT.value)


def train(config, workdir: str, describe=None) -> None:
  """What every training launcher does: start the job, build the task, log
  `describe(task)`, train and evaluate, and print the final validation JSON."""
  import json

  from mmzoo import tasks
  from mmzoo.train import loop

  initialize_distributed()
  task = tasks.build(config)
  if describe is not None:
    logging.info("%s", describe(task))
  results = loop.train_and_evaluate(task, workdir)
  print(json.dumps({"validation": results}), flush=True)


def describe_captioned_images(task) -> str:
  """The data of a captioning or retrieval task, for the log."""
  return (f"data: {task.config.data.source}, {({s: len(v) for s, v in task.splits.items()})} "
          f"images per split, vocabulary of {task.tokenizer.vocab_size}")


class _DropLibraryChatter:
  """Keeps orbax's per-save INFO lines out of the training log."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or "/orbax/" not in record.pathname


def checkpoint_flag():
  """Defines --checkpoint: which of a workdir's checkpoints to restore."""
  return flags.DEFINE_enum(
      "checkpoint", None, ["best", "latest"],
      "Which checkpoints to read; default the best when the run kept one, else the latest.")


def decoding_flags():
  """Defines the captioning decoding flags; returns a function giving their config overrides.

  --beam_size (1 = greedy), or --temperature > 0 to sample (with --top_k, --top_p,
  --seed); unset flags keep the checkpoint's config.
  """
  defined = {
      "beam_size": flags.DEFINE_integer(
          "beam_size", None, "Captioning: beam width (1 = greedy); default the config's."),
      "temperature": flags.DEFINE_float(
          "temperature", None, "Captioning: > 0 samples one caption per image at this "
          "temperature instead of searching."),
      "top_k": flags.DEFINE_integer("top_k", None, "Sampling: keep the k likeliest words."),
      "top_p": flags.DEFINE_float("top_p", None, "Sampling: nucleus probability mass."),
      "seed": flags.DEFINE_integer("seed", None, "Sampling: the noise's seed."),
  }

  def overrides() -> dict:
    return {f"eval.{name}": flag.value for name, flag in defined.items()
            if flag.value is not None}

  return overrides


def run(main, positional: bool = False,
        batch_sizes: Callable[[], Sequence[int]] | None = None) -> None:
  """`app.run(main)`, printing input problems as one line and exiting 1.

  Positional arguments are refused unless `positional` (then `main` gets them).
  `batch_sizes`, given by launchers whose models may train faster on a split CPU
  (char_rnn: small per-step ops), returns the config's global batch sizes once
  flags are parsed (or None: one device); with --cpu_devices=auto the CPU is then
  split into as many devices as they allow (`parallel.auto_cpu_devices`). Unless
  --noretain_freed_memory, freed host memory is kept for reuse
  (`host_memory.retain_freed_memory`).

  In a multi-process job any error ends every process: this one prints it (a
  traceback first, unless it is an input problem) and exits 1, and the others
  print `error: process I of N stopped with an error (see its log)`. A process
  that dies outright (killed, crashed) is named by the survivors with
  `error: lost process I of N: ...` (`parallel._PeerWatchdog`).
  """

  def checked_main(argv):
    logging.get_absl_handler().addFilter(_DropLibraryChatter())
    if len(argv) > 1 and not positional:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
      # Before anything starts JAX's backends.
      devices = parallel.cpu_device_count(
          CPU_DEVICES.value, None if batch_sizes is None else batch_sizes(),
          parallel.multi_process_requested(COORDINATOR.value, NUM_PROCESSES.value))
      if devices > 1:
        logging.info("--cpu_devices=%s: %d single-threaded CPU devices, one per core "
                     "(--cpu_devices=0 keeps one device on all cores)", CPU_DEVICES.value,
                     devices)
      parallel.split_cpu(devices)
      if RETAIN_MEMORY.value and host_memory.retain_freed_memory():
        logging.info("freed host memory is kept for reuse (--noretain_freed_memory: "
                     "malloc's defaults)")
      result = main(argv)
    except (InputError, FloatingPointError) as e:
      # Exits at once (os._exit): atexit hooks could block on a dead peer process.
      parallel.exit_with_error(str(e))
    except Exception as e:
      if not parallel.is_multi_process():
        raise
      if isinstance(e, jax.errors.JaxRuntimeError):  # E.g. a collective with a dead peer.
        parallel.wait_for_lost_peer()
      traceback.print_exc()
      sys.stderr.flush()
      first_line = (str(e).splitlines() or [""])[0]
      parallel.exit_with_error(f"{type(e).__name__}: {first_line}")
    parallel.finish_distributed()
    return result

  app.run(checked_main)
