r"""Forward + backward time of one recurrent layer: mmzoo's `Recurrent` vs PyTorch.

One LSTM layer and one GRU layer (input 512, hidden 512, batch 64, 50 steps,
float32 by default), each as mmzoo's `Recurrent` and as PyTorch's
`nn.LSTM`/`nn.GRU(batch_first=True)`, in the same run and with the same
weights (moved over with `from_torch`). The loss is the sum of the outputs
times a fixed random projection; each iteration computes the gradient with
respect to every parameter and to the input.

Compilation and `--warmup` calls are not timed; every timed call of the
mmzoo side ends with `jax.block_until_ready`. The `--reps` calls of each
framework run in `--rounds` blocks that alternate between the frameworks
(mmzoo block, torch block, mmzoo block, ...), so that a slow spell of a
shared machine hits both, while no call starts right after the other
framework's (whose worker threads may still be spinning, which slows the
next call by 5-10% on 2 cores); the median call of each is reported.
PyTorch runs on `os.cpu_count()` threads.

mmzoo's LSTM and GRU run through its fused CPU kernels where they apply
(mmzoo/nn/cpu_kernels.py: AVX-512, a C++ compiler; on every CPU device); then its
XLA loop (`fused_cpu_kernel=False`) is timed too, in the same alternation, as
an extra row (`--noxla_loop` leaves it out). `MMZOO_CPU_KERNELS=0` turns the
kernels off.

  python benchmarks/rnn_layer.py                # < 1 minute on 2 cores
  python benchmarks/rnn_layer.py --reps=50 --cells=lstm
  # One XLA device per core, the batch split between them (as the launchers run on CPU):
  XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false" \
      python benchmarks/rnn_layer.py
"""

from __future__ import annotations

import os
import platform
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from machine import alternating, host_memory_policy, retain_memory_flag

from mmzoo.nn.recurrent import from_torch
from mmzoo.train import parallel

CELLS = flags.DEFINE_list("cells", ["lstm", "gru"], "Which layers to time (lstm, gru, rnn).")
INPUT = flags.DEFINE_integer("input_size", 512, "Input features.")
HIDDEN = flags.DEFINE_integer("hidden_size", 512, "Hidden units.")
BATCH = flags.DEFINE_integer("batch_size", 64, "Examples per call.")
STEPS = flags.DEFINE_integer("seq_len", 50, "Time steps.")
REPS = flags.DEFINE_integer("reps", 20, "Timed calls per framework; the median counts.")
ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternating blocks the timed calls are split into.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls after compilation.")
RETAIN_MEMORY = retain_memory_flag()
UNROLL = flags.DEFINE_integer("unroll", None, "Overrides `Recurrent.unroll` (default: its own).")
XLA_LOOP = flags.DEFINE_bool(
    "xla_loop", True, "Also time mmzoo's XLA loop (fused_cpu_kernel=False) beside the fused "
    "LSTM CPU kernel, in the same alternation (LSTM only, where the kernel runs).")

try:
  import torch
except ImportError:  # pragma: no cover - depends on the environment
  torch = None


def _torch_layer(cell: str, input_size: int, hidden: int):
  cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
  return cls(input_size, hidden, batch_first=True)


def _random_state_dict(cell: str, input_size: int, hidden: int, rng) -> dict[str, np.ndarray]:
  gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
  bound = 1.0 / np.sqrt(hidden)

  def u(*shape):
    return rng.uniform(-bound, bound, shape).astype(np.float32)

  return {"weight_ih_l0": u(gates * hidden, input_size), "weight_hh_l0": u(gates * hidden, hidden),
          "bias_ih_l0": u(gates * hidden), "bias_hh_l0": u(gates * hidden)}


def _mmzoo_fn(cell: str, state_dict, x: np.ndarray, proj: np.ndarray, fused: bool = True):
  """`(run, label)`: one timed call, and which path the layer takes."""
  module, params = from_torch(state_dict, cell, num_layers=1)
  module = module.clone(fused_cpu_kernel=fused)
  if UNROLL.value is not None:
    module = module.clone(unroll=UNROLL.value)
  # Data parallel over every device (one per core with the flags in the docstring): the
  # batch is split on the mesh's 'data' axis, the weights replicated.
  mesh = parallel.make_mesh()
  x = jax.device_put(x, parallel.batch_sharding(mesh))
  proj = jax.device_put(proj, parallel.batch_sharding(mesh))
  params = jax.device_put(params, parallel.replicated(mesh))

  def loss(params, x, proj):
    out, _ = module.apply({"params": params}, x)
    return jnp.sum(out * proj)

  # Compiled here so that its HLO says which path runs (with the batch sharded over several
  # devices the kernel's call is named only after partitioning).
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x, proj).compile()

  def run():
    return jax.block_until_ready(grad(params, x, proj))

  kernel = f"mmzoo_{cell}_forward" in grad.as_text()
  return run, "fused kernel" if kernel else f"XLA loop, unroll={module.unroll}"


def _torch_fn(cell: str, state_dict, x: np.ndarray, proj: np.ndarray):
  layer = _torch_layer(cell, x.shape[-1], proj.shape[-1])
  layer.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
  x = torch.from_numpy(x).requires_grad_(True)
  proj = torch.from_numpy(proj)

  def run():
    layer.zero_grad(set_to_none=True)
    x.grad = None
    out, _ = layer(x)
    loss = (out * proj).sum()
    loss.backward()
    return loss.item()

  return run


def main(argv):
  del argv
  num_threads = os.cpu_count() or 1
  memory = host_memory_policy(RETAIN_MEMORY.value)
  if torch is not None:
    torch.set_num_threads(num_threads)
  print(f"machine: {platform.processor() or platform.machine()}, {num_threads} cores; "
        f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} devices, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})"
        + (f", torch {torch.__version__}" if torch is not None else "")
        + f"; host memory: {memory}")
  print(f"shape: input {INPUT.value}, hidden {HIDDEN.value}, batch {BATCH.value}, "
        f"{STEPS.value} steps, float32; forward + backward; median of {REPS.value} calls "
        f"({ROUNDS.value} alternating blocks) after {WARMUP.value} warm-up calls")
  if torch is None:
    print("torch: skipped (PyTorch is not installed)")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((BATCH.value, STEPS.value, INPUT.value)).astype(np.float32)
  proj = rng.standard_normal((BATCH.value, STEPS.value, HIDDEN.value)).astype(np.float32)

  rows = []
  for cell in CELLS.value:
    state_dict = _random_state_dict(cell, INPUT.value, HIDDEN.value, rng)
    jax_run, label = _mmzoo_fn(cell, state_dict, x, proj)
    runs, labels = {"mmzoo": jax_run}, {"mmzoo": label}
    if XLA_LOOP.value and label == "fused kernel":
      runs["loop"], labels["loop"] = _mmzoo_fn(cell, state_dict, x, proj, fused=False)
    if torch is not None:
      runs["torch"] = _torch_fn(cell, state_dict, x, proj)
    for run in runs.values():  # compiles, then warms up
      for _ in range(WARMUP.value + 1):
        run()
    times, _ = alternating(runs, REPS.value, ROUNDS.value)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in ("mmzoo", "loop"):
      if name in med:
        rows.append((f"{cell} ({labels[name]})", med[name], med.get("torch")))

  print()
  print(f"| {'layer':<28} | {'mmzoo ms':>9} | {'torch ms':>9} | {'torch / mmzoo':>13} |")
  print(f"|{'-' * 30}|{'-' * 10}:|{'-' * 10}:|{'-' * 14}:|")
  for name, jax_ms, torch_ms in rows:
    t = f"{torch_ms:9.2f}" if torch_ms is not None else f"{'-':>9}"
    r = f"{torch_ms / jax_ms:13.2f}" if torch_ms is not None else f"{'-':>13}"
    print(f"| {name:<28} | {jax_ms:9.2f} | {t} | {r} |")


if __name__ == "__main__":
  app.run(main)
