"""Data parallelism over a device mesh, and multi-host start-up and shut-down.

Batches are sharded over the mesh's `'data'` axis and parameters replicated
(jit + `NamedSharding`). In a multi-host job every process feeds only its own
slice of the global batch (`global_batch`); cross-process collectives on CPU
go through gloo over TCP.

A multi-process job stops as a whole: when one process dies, the others print
one line naming it and exit 1 (`_PeerWatchdog`), rather than waiting in a
collective or a checkpoint barrier.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmzoo.errors import InputError

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout_seconds: int = 30) -> None:
  """Calls `jax.distributed.initialize` when a multi-process job is asked for.

  Explicit arguments win; otherwise JAX's cluster detection reads the
  environment (SLURM, Open MPI, TPU pods, ...) when `JAX_COORDINATOR_ADDRESS`
  or a known cluster is present. A single process with no coordinator needs no
  initialisation. CPU collectives go through gloo (JAX's default).

  When another process dies, this one prints `error: lost process I of N: ...`
  and exits 1 at once (`_PeerWatchdog`); if its host vanished without closing
  its connections, JAX's coordination service aborts this process after about
  `heartbeat_timeout_seconds` instead, with its own fatal message.
  """
  global _watchdog, _multi_process
  if not multi_process_requested(coordinator_address, num_processes):
    return
  if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # Default in recent JAX.
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
      initialization_timeout=120, shutdown_timeout_seconds=30)
  logging.info("process %d of %d; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  _multi_process = jax.process_count() > 1
  if _multi_process:
    _watchdog = _PeerWatchdog.start()


def multi_process_requested(coordinator_address: str | None = None,
                            num_processes: int | None = None) -> bool:
  """Whether `initialize_distributed` will start a multi-process job."""
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  return explicit or any(k in os.environ for k in (
      "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"))


_FORCED_COUNT = "xla_force_host_platform_device_count"


def split_cpu(devices: int) -> None:
  """Runs the CPU as `devices` single-threaded XLA devices (none for 0 or 1).

  Call before JAX starts its backends. Small per-step matmuls, as in a
  recurrent loop, run faster this way than on one device whose every op is
  split over all cores: each core runs its own shard of the batch without
  waiting on the others inside each op (benchmarks/RESULTS.md, char_lm).
  """
  if devices <= 1:
    return
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if _FORCED_COUNT in xla_flags:
    raise InputError(f"--cpu_devices and XLA_FLAGS=--{_FORCED_COUNT} both set the number of "
                     "CPU devices; use one of them")
  os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_cpu_multi_thread_eigen=false".strip()
  jax.config.update("jax_num_cpu_devices", devices)


def auto_cpu_devices(batch_sizes: Sequence[int], multi_process: bool = False,
                     cores: int | None = None) -> int:
  """How many CPU devices `split_cpu` should make for these global batch sizes.

  The most devices, at most one per core, that every batch size splits into
  evenly; 0 (leave JAX's default) when that is one, in a multi-process job,
  when XLA_FLAGS already sets a CPU device count, or when JAX may run on an
  accelerator (JAX_PLATFORMS names another platform first, or a GPU or TPU
  plugin is installed).
  """
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if (multi_process or _FORCED_COUNT in os.environ.get("XLA_FLAGS", "")
      or platforms.split(",")[0] not in ("", "cpu")
      or (not platforms and _accelerator_plugin_installed())):
    return 0
  if cores is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  best = max((d for d in range(1, (cores or 1) + 1) if all(b % d == 0 for b in batch_sizes)),
             default=1)
  return best if best > 1 else 0


def cpu_device_count(value: str, batch_sizes: Sequence[int] | None,
                     multi_process: bool = False) -> int:
  """The CPU device count a `--cpu_devices` value asks for.

  'auto' is `auto_cpu_devices(batch_sizes)`, or 0 (one device) when `batch_sizes`
  is None; otherwise the value must be a number >= 0.
  """
  word = value.strip().lower()
  if word == "auto":
    return 0 if batch_sizes is None else auto_cpu_devices(batch_sizes, multi_process)
  if not word.isdigit():
    raise InputError(f"--cpu_devices={value}: expected 'auto' or a number >= 0")
  return int(word)


def _accelerator_plugin_installed() -> bool:
  """Whether a GPU or TPU backend for JAX is installed (found without starting JAX)."""
  import importlib.util

  return any(importlib.util.find_spec(name) is not None for name in (
      "jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))


class InFlight:
  """Bounds the dispatched steps that are not done: `admit(outputs)`, called just after
  a step is dispatched, waits until fewer than `depth` steps are outstanding.

  `depth` defaults to `steps_in_flight()`. With two, the host prepares and queues the
  next step while one runs, no further: with many queued steps, XLA's in-process
  all-reduce over several CPU devices (`split_cpu`) hung now and then on jax 0.10.2
  (one device never reached the rendezvous and XLA aborted the run after 40 s;
  benchmarks/RESULTS.md, char_lm).
  """

  def __init__(self, depth: int | None = None):
    self._depth = steps_in_flight() if depth is None else depth
    if self._depth not in (1, 2):
      raise ValueError(f"depth must be 1 or 2, got {self._depth}")
    self._previous = None

  def admit(self, outputs: Any) -> None:
    if self._depth == 1:
      jax.block_until_ready(outputs)
      return
    if self._previous is not None:
      jax.block_until_ready(self._previous)
    self._previous = outputs


def steps_in_flight() -> int:
  """1 where every device is a CPU, else 2.

  On a CPU host the host and the devices share the cores, so a queued step buys no
  overlap, and the char model's step measured 5-10% faster when each step is waited
  for (benchmarks/RESULTS.md, char_lm); an accelerator runs while the host prepares
  the next step.
  """
  return 1 if all(d.platform == "cpu" for d in jax.devices()) else 2


def make_mesh() -> Mesh:
  """A one-axis mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `'data'`."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's numpy batch into one array sharded over `'data'`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree: Any) -> Any:
  """A pytree of global arrays as numpy on every process (gathered across processes)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def check_batch_size(global_batch_size: int, what: str = "batch size") -> None:
  """Data parallelism needs the global batch to split evenly over devices."""
  if global_batch_size % jax.device_count():
    raise InputError(f"{what} {global_batch_size} is not divisible by the "
                     f"{jax.device_count()} devices")


# --- Stopping a multi-process job as a whole. ---

_WATCHDOG_KEY = "mmzoo/peer_watchdog"
_CONNECT_TIMEOUT_S = 120
_FAIL_GRACE_S = 1.0  # Lets a process report its own error before a peer's.
_RUNTIME_ERROR_GRACE_S = 3.0  # Lets a collective's error give way to the named lost peer.


class _PeerWatchdog:
  """Notices at once when another process of the job ends without finishing.

  Process 0 listens on a free port, published in the coordination service's
  key-value store; every other process holds one TCP connection to it. A
  process that finishes says "bye" (`finish_distributed`) and one that fails
  says "fail" (`exit_with_error`) before it exits. A connection that closes
  without either means its process died (killed, crashed, out of memory): the
  survivor prints one line naming it and exits 1, and process 0 first relays
  the loss to the others. A host that vanishes without closing its
  connections is still caught by JAX's coordination service, whose heartbeat
  aborts the survivors after `heartbeat_timeout_seconds`.
  """

  def __init__(self, process_index: int, process_count: int):
    self.me, self.count = process_index, process_count
    self._conns: dict[int, socket.socket] = {}
    self._finished: set[int] = set()
    self._failed: set[int] = set()
    self._ending = threading.Lock()  # Taken once, by whoever ends this process.
    self._connected = threading.Event()  # Set once connecting succeeded or gave up.

  @classmethod
  def start(cls) -> _PeerWatchdog | None:
    try:
      from jax._src import distributed  # The client orbax also uses.

      state = distributed.global_state
      client, host = state.client, state.coordinator_address.rsplit(":", 1)[0].strip("[]")
    except Exception as e:  # A missing watchdog only delays failure reports.
      logging.warning("no peer-process watchdog (%s); a dead process is noticed after the "
                      "heartbeat timeout", e)
      return None
    watchdog = cls(jax.process_index(), jax.process_count())
    target = watchdog._serve if watchdog.me == 0 else watchdog._connect
    threading.Thread(target=target, args=(client, host), name="peer-watchdog",
                     daemon=True).start()
    return watchdog

  def _serve(self, client, host: str) -> None:
    try:
      if socket.has_dualstack_ipv6():
        server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
      else:
        server = socket.create_server(("", 0))
      client.key_value_set(_WATCHDOG_KEY, str(server.getsockname()[1]))
      server.settimeout(_CONNECT_TIMEOUT_S)
      for _ in range(self.count - 1):
        conn, _ = server.accept()
        conn.settimeout(_CONNECT_TIMEOUT_S)
        peer = int(conn.recv(16).split(b"\n")[0])
        conn.settimeout(None)
        self._conns[peer] = conn
        threading.Thread(target=self._watch, args=(conn, peer), daemon=True).start()
      server.close()
    except Exception as e:
      logging.warning("peer-process watchdog: %d of %d processes connected (%s)",
                      len(self._conns), self.count - 1, e)
    finally:
      self._connected.set()

  def _connect(self, client, host: str) -> None:
    try:
      port = int(client.blocking_key_value_get(_WATCHDOG_KEY, _CONNECT_TIMEOUT_S * 1000))
      conn = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S)
      conn.settimeout(None)
      conn.sendall(f"{self.me}\n".encode())
      self._conns[0] = conn
    except Exception as e:
      logging.warning("peer-process watchdog could not reach process 0 at %s (%s)", host, e)
      return
    finally:
      self._connected.set()
    self._watch(conn, 0)

  def _watch(self, conn: socket.socket, peer: int) -> None:
    """Reads `peer`'s messages until its connection closes."""
    buffer = b""
    try:
      while data := conn.recv(4096):
        buffer += data
        while b"\n" in buffer:
          line, buffer = buffer.split(b"\n", 1)
          self._on_message(peer, line.decode())
    except OSError:
      pass
    if peer in self._finished:
      return
    if peer in self._failed:
      time.sleep(_FAIL_GRACE_S)
      self.end(f"process {peer} of {self.count} stopped with an error (see its log)",
               lost_peer=True)
    else:
      self.end(f"lost process {peer} of {self.count}: it exited before the job finished "
               "(killed or crashed; see its log)", lost_peer=True)

  def _on_message(self, peer: int, message: str) -> None:
    if message == "bye":
      self._finished.add(peer)
    elif message == "fail":
      self._failed.add(peer)
    elif message.startswith("lost "):  # Process 0 relays another process's loss.
      self.end(message[len("lost "):], lost_peer=True)

  def _send(self, message: str) -> None:
    for conn in list(self._conns.values()):
      try:
        conn.sendall(f"{message}\n".encode())
      except OSError:
        pass

  def finish(self) -> None:
    self._connected.wait(_CONNECT_TIMEOUT_S)  # A peer that missed the "bye" would report a loss.
    self._send("bye")

  def end(self, line: str, *, lost_peer: bool = False, failed: bool = False) -> NoReturn:
    """Prints `error: line`, tells the other processes, and exits 1 (once per process).

    `lost_peer`: another process ended the job (process 0 relays it to the
    rest); `failed`: this process hit an error of its own.
    """
    if not self._ending.acquire(blocking=False):
      while True:  # Another thread is already ending this process.
        time.sleep(60)
    suffix = f"; stopping process {self.me} too" if lost_peer else ""
    print(f"error: {line}{suffix}", file=sys.stderr, flush=True)
    if failed:
      self._send("fail")
    elif lost_peer and self.me == 0:
      self._send(f"lost {line}")
    os._exit(1)


_watchdog: _PeerWatchdog | None = None
_multi_process = False


def is_multi_process() -> bool:
  """Whether `initialize_distributed` started a job of more than one process."""
  return _multi_process


def finish_distributed() -> None:
  """Tells the other processes that this one finished normally (call before exiting)."""
  if _watchdog is not None:
    _watchdog.finish()


def wait_for_lost_peer() -> None:
  """After a cross-process operation failed: gives the watchdog a moment to
  name a lost process (it then ends this one) before the error is reported."""
  if _watchdog is not None:
    time.sleep(_RUNTIME_ERROR_GRACE_S)


def exit_with_error(message: str) -> NoReturn:
  """Prints `error: message` on stderr, tells the other processes, and exits 1.

  Skips atexit hooks, whose `jax.distributed.shutdown` would wait on the other
  processes.
  """
  if _watchdog is None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(1)
  _watchdog.end(message, failed=True)
