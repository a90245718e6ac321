"""LSTM and GRU recurrences as fused CPU kernels (XLA FFI calls), built on first use.

XLA's CPU runtime runs a scanned LSTM or GRU as a dozen small ops per time
step, each dispatched on its own; `kernels/recurrent_cpu.cc` runs a whole
sequence in one call, with the gate math fused into the epilogue of each
step's matmul of `[x_t | h_{t-1}]` by `[W_ih; W_hh]`, as oneDNN's RNN primitive
does for PyTorch; its backward computes `x`'s gradient beside the recurrence's.
The weight gradients are matmuls over all steps (`weight_grads`).
benchmarks/RESULTS.md has the measurements.

`recurrent.py` makes the layers differentiable around `lstm_forward`,
`lstm_backward`, `gru_forward` and `gru_backward`, and takes the weight
gradients from `weight_grads`, a blocked GEMM that XLA's own dot trails on these
shapes.

The kernels need x86-64 with AVX-512 (F and DQ), Linux and a C++20 compiler
(`$CXX`, else g++, c++ or clang++). They are compiled once against JAX's FFI
headers into `$MMZOO_CACHE_DIR` (default `~/.cache/mmzoo`), keyed by the
source, the compiler and the JAX version, which takes ~8 s. Where any of that
is missing `recurrent.py` keeps its XLA loop, and says why once (INFO log).
Both compute the same function (tests/test_cpu_kernels.py).

`MMZOO_CPU_KERNELS=0` turns the kernels off; otherwise they run wherever they
fit (see `applies`), on one thread per device where a process splits its
cores into one CPU device each (as the char launcher does).

Under `jit` with sharded inputs the calls are partitioned over the batch
(`custom_partitioning`): each device runs its own rows, as it would the XLA loop.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

_SOURCE = Path(__file__).with_name("kernels") / "recurrent_cpu.cc"
# cell -> (forward, backward) FFI targets, and the library symbols that implement them.
_TARGETS = {"lstm": ("mmzoo_lstm_forward", "mmzoo_lstm_backward"),
            "gru": ("mmzoo_gru_forward", "mmzoo_gru_backward")}
_WEIGHT_GRADS = "mmzoo_weight_grads"
_SYMBOLS = {"mmzoo_lstm_forward": "MmzooLstmForward", "mmzoo_lstm_backward": "MmzooLstmBackward",
            "mmzoo_gru_forward": "MmzooGruForward", "mmzoo_gru_backward": "MmzooGruBackward",
            _WEIGHT_GRADS: "MmzooWeightGrads"}
_FLAGS = ("-O3", "-std=c++20", "-mavx512f", "-mavx512dq", "-mfma", "-shared", "-fPIC")
POLICY_ENV = "MMZOO_CPU_KERNELS"  # "0": never; otherwise wherever they fit.
HIDDEN_MULTIPLE = 64  # The kernels' tiles need hidden % 64 == 0.

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: bool | None = None  # None until the first `available()`.


def available() -> bool:
  """Whether the fused kernels are built and registered (builds them on the first call)."""
  global _loaded
  with _lock:
    if _loaded is None:
      _loaded = _load()
    return _loaded


def applies(cell: str, x: jax.Array, w_hh: jax.Array, carry, mask) -> bool:
  """Whether `recurrent.py` should run this layer through a fused kernel.

  It must be an LSTM or GRU layer that fits the kernels (no mask, float32,
  hidden a multiple of 64, on CPU, the kernels built) and they must not be
  turned off (`MMZOO_CPU_KERNELS=0`). With one device per core, as the char
  launcher splits a CPU, each device runs them on one thread
  (benchmarks/RESULTS.md, char_lm, has the measurements).
  """
  return (_fits(cell, w_hh.shape[0]) and mask is None
          and all(a.dtype == jnp.float32 for a in (x, w_hh, *jax.tree.leaves(carry)))
          and jax.default_backend() == "cpu" and available())


def expected(cell: str, hidden: int) -> bool:
  """Whether `cell` layers of `hidden` units will run through the kernels here, judged
  without building them or starting JAX (a launcher decides how to split the CPU
  before that): the cell, the hidden size, the policy, the CPU and a compiler."""
  return _fits(cell, hidden) and _unsupported() is None


def _fits(cell: str, hidden: int) -> bool:
  """A cell and size the kernels take, with the kernels not turned off."""
  return (cell in _TARGETS and hidden % HIDDEN_MULTIPLE == 0
          and os.environ.get(POLICY_ENV) != "0")


def _unsupported() -> str | None:
  """Why the kernel cannot run here, or None."""
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    return f"needs Linux on x86-64, not {platform.system()} on {platform.machine()}"
  try:
    cpuinfo = Path("/proc/cpuinfo").read_text()
  except OSError as e:
    return f"cannot read /proc/cpuinfo ({e})"
  flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                if line.startswith("flags")), [])
  missing = [f for f in ("avx512f", "avx512dq", "fma") if f not in flags]
  if missing:
    return f"the CPU lacks {', '.join(missing)}"
  if _compiler() is None:
    return "no C++ compiler ($CXX, g++, c++ or clang++) found"
  return None


def _compiler() -> str | None:
  return os.environ.get("CXX") or next(
      (c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return jax.__version__


def _cache_dir() -> Path:
  root = os.environ.get("MMZOO_CACHE_DIR") or Path(
      os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmzoo"
  return Path(root) / "kernels"


def _build() -> Path:
  """Compiles the kernels into the cache (once per source, compiler and JAX version)."""
  compiler = _compiler()
  include = jax.ffi.include_dir()
  source = _SOURCE.read_bytes()
  key = hashlib.sha256(b"\0".join(
      [source, compiler.encode(), " ".join(_FLAGS).encode(), _jaxlib_version().encode()])
  ).hexdigest()[:16]
  for cache in (_cache_dir(), Path(tempfile.gettempdir()) / f"mmzoo-kernels-{os.getuid()}"):
    target = cache / f"recurrent_cpu-{key}.so"
    if target.exists():
      return target
    try:
      cache.mkdir(parents=True, exist_ok=True)
      fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
      os.close(fd)
    except OSError:
      continue  # not writable: try the next place
    start = time.perf_counter()
    try:
      subprocess.run([compiler, *_FLAGS, "-I", include, str(_SOURCE), "-o", tmp], check=True,
                     capture_output=True, text=True, timeout=600)
      os.replace(tmp, target)  # atomic: concurrent builders each leave a whole file
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
    _log.info("built the fused recurrent CPU kernels in %.1f s: %s",
              time.perf_counter() - start, target)
    return target
  raise OSError(f"no writable cache directory for the kernels ({_cache_dir()})")


def _load() -> bool:
  reason, level = _unsupported(), logging.INFO
  if reason is None:
    level = logging.WARNING  # it should have worked
    try:
      path = _build()
      lib = ctypes.CDLL(str(path))
      for target, symbol in _SYMBOLS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
      _log.info("LSTM and GRU layers without lengths run through the fused CPU kernels (%s)",
                path)
      return True
    except subprocess.CalledProcessError as e:
      last = (e.stderr or "").strip().splitlines()[-1:] or ["(no output)"]
      reason = f"compiling {_SOURCE.name} failed: {last[0]}"
    except (OSError, subprocess.TimeoutExpired, AttributeError) as e:  # AttributeError: no symbol
      reason = f"{type(e).__name__}: {e}"
  _log.log(level, "fused recurrent CPU kernels not used (%s); LSTM and GRU layers run as XLA "
           "loops", reason)
  return False


# --- the FFI calls, partitioned over the batch --------------------------------------------

def _seq(axis: int, batch: int, steps: int, width: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((batch, steps, width) if axis else (steps, batch, width),
                              jnp.float32)


def _threads_per_device() -> np.int64:
  """The cores each of this process's CPU devices may use (1 with one device per core)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return np.int64(max(1, (cores or 1) // jax.local_device_count("cpu")))


def _forward_call(cell: str, axis: int, save: bool, x, w_ih, bias, w_hh, *states):
  """The cell's forward kernel: `(hs, cs, act)` for an LSTM, `(hs, act)` for a GRU."""
  steps, batch, hidden = x.shape[axis], x.shape[1 - axis], w_hh.shape[0]
  hs = _seq(axis, batch, steps, hidden)
  act = _seq(axis, batch, steps, 4 * hidden if save else 0)
  out = (hs, hs, act) if cell == "lstm" else (hs, act)
  # (Aliasing `act` to the input would save memory, but XLA then copies the input first.)
  return jax.ffi.ffi_call(_TARGETS[cell][0], out, vmap_method="sequential")(
      x, w_ih, bias, w_hh, *states, batch_major=np.int64(axis),
      max_threads=_threads_per_device())


def _backward_call(cell: str, axis: int, act, seq, h_or_c0, w_ih, w_hh, d_hs, *d_final):
  """The cell's reverse loop: `(dz, d_h0, d_c0, d_b_rows, dx)` for an LSTM (`seq`
  its `cs`, `h_or_c0` its `c0`), `(dxw, dhw, d_h0, d_b_rows, dx)` for a GRU
  (`seq` its `hs`, `h_or_c0` its `h0`)."""
  batch, hidden = h_or_c0.shape
  steps = act.shape[axis]
  state = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
  rows = jax.ShapeDtypeStruct((batch, 4 * hidden), jnp.float32)
  dx = _seq(axis, batch, steps, w_ih.shape[0])
  if cell == "lstm":
    # The gate gradients overwrite the saved activations in place.
    out, aliases = (jax.ShapeDtypeStruct(act.shape, act.dtype), state, state, rows, dx), {0: 0}
  else:
    dz = _seq(axis, batch, steps, 3 * hidden)
    out, aliases = (dz, dz, state, rows, dx), {}
  return jax.ffi.ffi_call(_TARGETS[cell][1], out, input_output_aliases=aliases,
                          vmap_method="sequential")(
      act, seq, h_or_c0, w_ih, w_hh, d_hs, *d_final, batch_major=np.int64(axis),
      max_threads=_threads_per_device())


def _batch_partitioned(call, static: tuple, axis: int, kinds_in: str, kinds_out: str,
                       rule: str):
  """`call(*static, *arrays)`, each device running its own rows of the batch.

  `kinds_*` give each array's role: "s" a sequence (`[T, B, ..]` or `[B, T,
  ..]` by `axis`, the time axis), "b" a `[B, H]` state, "w" a weight
  (replicated), "r" (outputs only) a sum over the batch (replicated: each
  device's part, summed over the devices). Every other dimension is replicated.
  """

  def spec(kind: str, batch_axes):
    if kind in "wr":
      return P()
    return P(None, batch_axes) if kind == "s" and axis == 0 else P(batch_axes)

  def shardings(mesh, batch_axes, kinds):
    return tuple(NamedSharding(mesh, spec(k, batch_axes)) for k in kinds)

  def out_shardings(mesh, batch_axes):  # one output: its sharding, not a tuple
    out = shardings(mesh, batch_axes, kinds_out)
    return out[0] if len(out) == 1 else out

  def batch_axes_of(arg_shapes):
    first = arg_shapes[0].sharding.spec  # a sequence: its batch dim is 1 - axis
    return first[1 - axis] if len(first) > 1 - axis else None

  def partition(*args):
    mesh, arg_shapes, _ = args[len(static):]
    batch_axes = batch_axes_of(arg_shapes)
    lower = functools.partial(call, *static)
    if "r" in kinds_out and batch_axes is not None:
      lower = _summed(lower, kinds_out, batch_axes)
    return mesh, lower, out_shardings(mesh, batch_axes), shardings(mesh, batch_axes, kinds_in)

  def infer(*args):  # for the GSPMD partitioner (jax_use_shardy_partitioner=False)
    mesh, arg_shapes, _ = args[len(static):]
    return out_shardings(mesh, batch_axes_of(arg_shapes))

  wrapped = custom_partitioning(call, static_argnums=tuple(range(len(static))))
  wrapped.def_partition(partition=partition, infer_sharding_from_operands=infer,
                        sharding_rule=rule)
  return _mapped_under_vmap(functools.partial(wrapped, *static))


def _summed(lower, kinds_out: str, batch_axes):
  """`lower`, its outputs of kind "r" summed over the devices along `batch_axes`."""

  def summed(*args):
    outs = lower(*args)
    single = len(kinds_out) == 1
    outs = [jax.lax.psum(o, batch_axes) if k == "r" else o
            for o, k in zip((outs,) if single else outs, kinds_out, strict=True)]
    return outs[0] if single else tuple(outs)

  return summed


def _mapped_under_vmap(op):
  """`op`, which under `jax.vmap` runs once per mapped element (`lax.map`).

  `custom_partitioning` has no batching rule of its own.
  """

  @jax.custom_batching.custom_vmap
  def mapped(*args):
    return op(*args)

  @mapped.def_vmap
  def _rule(axis_size, in_batched, *args):
    args = tuple(a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
                 for a, batched in zip(args, in_batched, strict=True))
    out = jax.lax.map(lambda a: mapped(*a), args)
    return out, jax.tree.map(lambda _: True, out)

  return mapped


def lstm_forward(axis: int, save: bool, x, w_ih, bias, w_hh, h0, c0):
  """The LSTM kernel's forward over a sequence: `(hs, cs, act)` (see kernels/recurrent_cpu.cc).

  `axis` is the time axis of `x`; with `w_ih` None, `x` is the input
  projection `x W_ih` (without `bias`) already. `bias` is `b_ih + b_hh`. With
  `save`, `act` holds the gate activations the backward needs, else it is
  empty. Check `applies` first.
  """
  return _forward_op("lstm", axis, save)(x, _weight_or_empty(w_ih, w_hh), bias, w_hh, h0, c0)


def lstm_backward(axis: int, act, cs, c0, w_ih, w_hh, d_hs, d_hT, d_cT):
  """The LSTM kernel's reverse loop: `(dz, d_h0, d_c0, d_b_rows, dx)` (see
  kernels/recurrent_cpu.cc).

  `dx`, the gradient of the forward's `x`, comes from the kernel where `w_ih`
  is given and `x`'s width is a multiple of 64; otherwise it is None, for the
  caller to get from `dz`.
  """
  w_ih = _dx_weight(w_ih)
  dz, d_h0, d_c0, d_b_rows, dx = _backward_op("lstm", axis)(
      act, cs, c0, _weight_or_empty(w_ih, w_hh), w_hh, d_hs, d_hT, d_cT)
  return dz, d_h0, d_c0, d_b_rows, None if w_ih is None else dx


def gru_forward(axis: int, save: bool, x, w_ih, bias, w_hh, h0):
  """The GRU kernel's forward over a sequence: `(hs, act)` (see kernels/recurrent_cpu.cc).

  As `lstm_forward`, but `bias` is `<float32>[4 hidden]`: `[b_ir + b_hr, b_iz
  + b_hz, b_in, b_hn]`, and `act` holds `[r, z, n, W_hn h + b_hn]` of every step.
  """
  return _forward_op("gru", axis, save)(x, _weight_or_empty(w_ih, w_hh), bias, w_hh, h0)


def gru_backward(axis: int, act, hs, h0, w_ih, w_hh, d_hs, d_hT):
  """The GRU kernel's reverse loop: `(dxw, dhw, d_h0, d_b_rows, dx)`.

  `dxw` and `dhw` are the gradients of every step's input and hidden
  projections (`[dr, dz, dn]` and `[dr, dz, dn r]`, pre-activations), whose
  matmuls give `dW_ih` and `dW_hh`; `d_b_rows` sums `[dr, dz, dn, dn r]` over
  time per row; `dx` as in `lstm_backward`.
  """
  w_ih = _dx_weight(w_ih)
  dxw, dhw, d_h0, d_b_rows, dx = _backward_op("gru", axis)(
      act, hs, h0, _weight_or_empty(w_ih, w_hh), w_hh, d_hs, d_hT)
  return dxw, dhw, d_h0, d_b_rows, None if w_ih is None else dx


def weight_grads(axis: int, x: jax.Array | None, hs: jax.Array | None, h0: jax.Array | None,
                 d: jax.Array) -> tuple[jax.Array | None, jax.Array | None]:
  """`(x^T d, h_prev^T d)` summed over time and batch, `h_prev` the state before
  each step (`h0`, then `hs` of the step before): a layer's `dW_ih` and `dW_hh`
  from its gates' gradients `d`.

  Sequences are `[T, B, ..]`, or `[B, T, ..]` with `axis=1`; `d`'s width must
  be a multiple of 64, as it is for every layer `applies` admits. `x`, or `hs` and `h0`, may be
  None (their gradient is then None too). `[x | h_prev]` is never written out.
  With the batch sharded, each device multiplies its own rows and the parts are
  summed over the devices.
  """
  def or_empty(seq):  # None: a sequence of width 0
    return jnp.zeros((*d.shape[:-1], 0), d.dtype) if seq is None else seq

  h0 = jnp.zeros((d.shape[1 - axis], 0), d.dtype) if hs is None else h0
  dw_x, dw_h = _weight_grads_op(axis)(or_empty(x), or_empty(hs), h0, d)
  return None if x is None else dw_x, None if hs is None else dw_h


def _weight_grads_call(axis: int, x, hs, h0, d):
  width = d.shape[-1]
  out = (jax.ShapeDtypeStruct((x.shape[-1], width), jnp.float32),
         jax.ShapeDtypeStruct((hs.shape[-1], width), jnp.float32))
  return jax.ffi.ffi_call(_WEIGHT_GRADS, out, vmap_method="sequential")(
      x, hs, h0, d, batch_major=np.int64(axis), max_threads=_threads_per_device())


@functools.cache
def _weight_grads_op(axis: int):
  s = functools.partial(_seq_dims, axis)
  rule = f"{s('i')}, {s('h')}, b h, {s('j')} -> i j, h j"
  return _batch_partitioned(_weight_grads_call, (axis,), axis, "ssbs", "rr", rule)


def _dx_weight(w_ih):
  """`w_ih` where the kernel computes `dx` with it (input width a multiple of 64), else None."""
  return w_ih if w_ih is not None and w_ih.shape[0] % HIDDEN_MULTIPLE == 0 else None


def _weight_or_empty(w_ih, w_hh):
  """`w_ih`, or the kernel's `[0, gates * H]` stand-in for none."""
  return jnp.zeros((0, w_hh.shape[1]), w_hh.dtype) if w_ih is None else w_ih


def _seq_dims(axis: int, width: str) -> str:
  """A sequence's dimensions in a sharding rule: `_seq`'s layout, `width` last."""
  return f"b t {width}" if axis else f"t b {width}"


@functools.cache
def _forward_op(cell: str, axis: int, save: bool):
  s = functools.partial(_seq_dims, axis)
  if cell == "lstm":
    rule = f"{s('f')}, i g, g, h g, b h, b h -> {s('h')}, {s('h')}, {s('k')}"
    return _batch_partitioned(_forward_call, (cell, axis, save), axis, "swwwbb", "sss", rule)
  rule = f"{s('f')}, i g, k, h g, b h -> {s('h')}, {s('k')}"
  return _batch_partitioned(_forward_call, (cell, axis, save), axis, "swwwb", "ss", rule)


@functools.cache
def _backward_op(cell: str, axis: int):
  s = functools.partial(_seq_dims, axis)
  if cell == "lstm":
    rule = (f"{s('g')}, {s('h')}, b h, i g, h g, {s('h')}, b h, b h -> "
            f"{s('g')}, b h, b h, b g, {s('j')}")
    return _batch_partitioned(_backward_call, (cell, axis), axis, "ssbwwsbb", "sbbbs", rule)
  rule = (f"{s('k')}, {s('h')}, b h, i g, h g, {s('h')}, b h -> "
          f"{s('g')}, {s('g')}, b h, b k, {s('j')}")
  return _batch_partitioned(_backward_call, (cell, axis), axis, "ssbwwsb", "ssbbs", rule)
