r"""Training throughput of the default char model: mmzoo's train step vs PyTorch.

Both frameworks train the same model on the same batches in one run: an
embedding, a stack of LSTM layers and a vocabulary projection, with softmax
cross-entropy, truncated BPTT (the carry of one chunk, without its gradient,
starts the next chunk of each stream), global-norm gradient clipping and Adam.

* mmzoo: `CharLMTask` built from `mmzoo/configs/char_rnn.py` (the size flags
  below override its fields) and `mmzoo.train.loop.train_step` with the
  config's optimizer, jitted and run exactly as the trainer does it (mesh,
  shardings, donated state, each step waited for as on any CPU host), on the devices the
  char_rnn launcher trains on by default (`--cpu_devices=auto`): one device on all
  cores where the fused LSTM kernels run, else one single-threaded XLA device per
  core that the batch splits into (`--cpu_devices=2` forces that split).
* PyTorch: `nn.Embedding -> nn.LSTM(batch_first=True) -> nn.Linear`,
  `F.cross_entropy`, detached hidden carry, `clip_grad_norm_(5)`,
  `torch.optim.Adam(lr=2e-3)` (constant: the learning-rate schedule costs
  nothing measurable), on `os.cpu_count()` threads.

Compilation and warm-up steps are not timed. Each timed window of `--steps`
steps ends with `block_until_ready`; the frameworks' windows alternate (mmzoo,
torch, mmzoo, ...) so that a slow spell of a shared machine hits both, and the
median window of each is reported. Each window follows one untimed step of its
own framework, so that no timed step starts while the other framework's worker
threads may still be spinning (as in `machine.alternating`). Batches come from
the config's corpus (the built-in one by default) and are made before timing,
so the data pipeline is not measured.

  python benchmarks/char_lm.py                       # the default config's sizes, < 4 minutes
  python benchmarks/char_lm.py --hidden_size=128 --windows=3 --steps=3   # quick
  python benchmarks/char_lm.py --breakdown           # also time parts of a step
  python benchmarks/char_lm.py --hidden_size=512 --batch_size=64   # the earlier 2x512 default

FLOP counts include only the matmuls of the model as PyTorch runs it: per LSTM
layer and step of one stream, 2 * 4H * (F + H) forward (F the layer's input
size), plus 2 * H * V for the output layer; forward + backward is counted as 3x
the forward. mmzoo's char model skips the first layer's input matmul (it
gathers rows of `embedding @ W_ih`, see `Recurrent`), so its GFLOP/s column is
the rate of the same model's work, not of the FLOPs it executes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

from absl import app, flags
from machine import busy_cpu_s, cpu_name, host_memory_policy, retain_memory_flag

# The model and batch default to mmzoo/configs/char_rnn.py's (its default `lstm` variant).
HIDDEN = flags.DEFINE_integer("hidden_size", None, "LSTM units per layer.")
LAYERS = flags.DEFINE_integer("num_layers", None, "Stacked LSTM layers.")
EMBED = flags.DEFINE_integer("embed_dim", None, "Character embedding size.")
BATCH = flags.DEFINE_integer("batch_size", None, "Parallel streams per step.")
SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Characters per TBPTT chunk.")
STEPS = flags.DEFINE_integer("steps", 5, "Training steps per timed window.")
WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows per framework; the median counts.")
WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
MAX_CHARS = flags.DEFINE_integer(
    "max_chars", None, "Characters of the built-in corpus to read (default: the config's).")
FRAMEWORKS = flags.DEFINE_list("frameworks", ["mmzoo", "torch"], "Which to run.")
CPU_DEVICES = flags.DEFINE_string(
    "cpu_devices", "auto", "mmzoo's CPU devices, as the char_rnn launcher's flag: 'auto' "
    "(its default) keeps one device on all cores where the fused LSTM kernels run, else "
    "one single-threaded XLA device per core that the batch splits into; N forces N "
    "devices, 0 one. XLA_FLAGS that set a device count win.")
RETAIN_MEMORY = retain_memory_flag()
BREAKDOWN = flags.DEFINE_bool(
    "breakdown", False, "Afterwards, also time parts of a step (median of --windows calls "
    "each): forward + loss, forward + backward, the LSTM stack alone, the optimizer update.")


def lstm_step_flops(batch: int, seq_len: int, embed: int, hidden: int, layers: int,
                    vocab: int) -> float:
  """Matmul FLOPs of one training step (forward + backward = 3x forward)."""
  forward = 0
  for layer in range(layers):
    in_features = embed if layer == 0 else hidden
    forward += 2 * batch * seq_len * 4 * hidden * (in_features + hidden)
  forward += 2 * batch * seq_len * hidden * vocab
  return 3.0 * forward


def time_window(run: Callable[[int], None], steps: int,
                others: list[float] | None = None) -> float:
  """Seconds per step over one window; `run(n)` must block until its work is done.

  Appends to `others` the cores that other processes kept busy meanwhile (NaN
  for windows under 0.2 s, too short for the kernel's 10 ms accounting).
  """
  busy0, own0 = busy_cpu_s()
  start = time.perf_counter()
  run(steps)
  wall = time.perf_counter() - start
  busy1, own1 = busy_cpu_s()
  if others is not None:
    load = min(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, float(os.cpu_count()))
    others.append(load if wall >= 0.2 else math.nan)
  return wall / steps


def median_call_s(run: Callable[[int], None], windows: int) -> tuple[float, float]:
  """Median seconds of one call, after one untimed (compiling) call, and the
  most cores other processes kept busy during a call."""
  run(1)
  others = []
  median = statistics.median(time_window(run, 1, others) for _ in range(windows))
  return median, max((o for o in others if not math.isnan(o)), default=math.nan)


@dataclasses.dataclass
class Runner:
  """One framework's training loop: `run(n)` trains n steps and blocks."""

  run: Callable[[int], None]
  losses: list[float]
  check: Callable[[], None] = lambda: None
  parts: Callable[[], dict[str, Callable[[int], None]]] = dict
  per_step: list[float] = dataclasses.field(default_factory=list)
  others: list[float] = dataclasses.field(default_factory=list)  # Other processes' cores.
  compile_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Shape:
  hidden: int
  layers: int
  embed: int
  batch: int
  seq_len: int
  vocab: int


def make_task():
  from mmzoo.configs import char_rnn as char_rnn_config
  from mmzoo.tasks.char_lm import CharLMTask

  config = char_rnn_config.get_config()
  config.model.cell = "lstm"
  for section, field, flag in (("model", "hidden_size", HIDDEN), ("model", "num_layers", LAYERS),
                               ("model", "embed_dim", EMBED), ("data", "batch_size", BATCH),
                               ("data", "seq_len", SEQ_LEN), ("data", "max_chars", MAX_CHARS)):
    if flag.value is not None:
      config[section][field] = flag.value
  if not config.model.embed_dim:
    raise app.UsageError("the PyTorch model needs an embedding; pass --embed_dim > 0")
  task = CharLMTask(config)
  m, d = config.model, config.data
  shape = Shape(hidden=m.hidden_size, layers=m.num_layers, embed=m.embed_dim,
                batch=d.batch_size, seq_len=d.seq_len, vocab=task.vocab.size)
  return task, shape


# --- mmzoo ---


def mmzoo_runner(task, s: Shape, batches: list[dict]) -> Runner:
  import jax

  from mmzoo.train import loop, parallel

  mesh = parallel.make_mesh()
  tx, init_fn, _, shardings = loop.abstract_train_state(task, mesh)
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(task.config.seed))
  step_fn = jax.jit(functools.partial(loop.train_step, tx, task.loss_fn),
                    in_shardings=(shardings, parallel.batch_sharding(mesh)),
                    out_shardings=(shardings, None), donate_argnums=0)
  device_batches = [parallel.global_batch(b, mesh) for b in batches]
  holder = {"state": state, "i": 0}
  losses = []

  def run(n: int) -> None:
    state, metrics = holder["state"], None
    in_flight = parallel.InFlight()  # As the trainer runs its steps.
    for _ in range(n):
      state, metrics = step_fn(state, device_batches[holder["i"] % len(device_batches)])
      holder["i"] += 1
      in_flight.admit(metrics)
    jax.block_until_ready((state, metrics))
    holder["state"] = state
    loss_sum, count = metrics["loss"]
    losses.append(float(loss_sum) / float(count))

  def check() -> None:
    if int(jax.device_get(holder["state"].bad_step)) >= 0:
      raise FloatingPointError("mmzoo: non-finite loss or gradient during the benchmark")

  def parts() -> dict[str, Callable[[int], None]]:
    return mmzoo_parts(task, s, tx, holder["state"], device_batches[1])

  return Runner(run=run, losses=losses, check=check, parts=parts)


def mmzoo_parts(task, s: Shape, tx, state, batch) -> dict[str, Callable[[int], None]]:
  """Parts of the train step, each jitted on its own (no donation)."""
  import jax
  import jax.numpy as jnp
  import optax

  from mmzoo.nn import recurrent
  from mmzoo.train import loop

  rng = jax.random.PRNGKey(1)
  params, carry = state.params, state.task_state

  def loss(p):
    return task.loss_fn(p, carry, batch, rng)

  def update(g, opt_state, p):
    updates, opt_state = tx.update(g, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  def bare_step(p, opt_state):
    g = jax.grad(lambda p: loss(p)[0])(p)
    return update(g, opt_state, p)

  stack = recurrent.Recurrent(cell="lstm", hidden_size=s.hidden, num_layers=s.layers)
  x = jax.random.normal(jax.random.PRNGKey(2), (s.batch, s.seq_len, s.embed))
  cot = jax.random.normal(jax.random.PRNGKey(3), (s.batch, s.seq_len, s.hidden))

  def stack_loss(p, x):
    return jnp.vdot(stack.apply({"params": p}, x, initial_carry=carry)[0], cot)

  grads = jax.jit(jax.grad(lambda p: loss(p)[0]))(params)
  calls = {
      "forward + loss": (jax.jit(lambda p: loss(p)[0]), (params,)),
      "forward + backward (value_and_grad)": (
          jax.jit(jax.value_and_grad(loss, has_aux=True)), (params,)),
      "LSTM stack forward": (jax.jit(lambda p, x: stack.apply({"params": p}, x)[0]),
                             (params["rnn"], x)),
      "LSTM stack forward + backward": (jax.jit(jax.grad(stack_loss, argnums=(0, 1))),
                                        (params["rnn"], x)),
      "optimizer update (clip + adam)": (jax.jit(update), (grads, state.opt_state, params)),
      "step without finite checks": (jax.jit(bare_step), (params, state.opt_state)),
      "train_step (no donation)": (
          jax.jit(functools.partial(loop.train_step, tx, task.loss_fn)), (state, batch)),
  }

  def runner(fn, args):
    def run(n):
      for _ in range(n):
        out = fn(*args)
      jax.block_until_ready(out)
    return run

  return {name: runner(fn, args) for name, (fn, args) in calls.items()}


# --- PyTorch ---


def torch_runner(s: Shape, batches: list[dict]) -> Runner:
  import torch
  import torch.nn.functional as F
  from torch import nn

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)

  class CharLSTM(nn.Module):

    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(s.vocab, s.embed)
      self.rnn = nn.LSTM(s.embed, s.hidden, s.layers, batch_first=True)
      self.out = nn.Linear(s.hidden, s.vocab)

    def forward(self, tokens, hidden):
      h, hidden = self.rnn(self.embed(tokens), hidden)
      return self.out(h), hidden

  model = CharLSTM()
  opt = torch.optim.Adam(model.parameters(), lr=2e-3, eps=1e-8)
  tensors = [{"inputs": torch.from_numpy(b["inputs"]).long(),
              "targets": torch.from_numpy(b["targets"]).long(),
              "reset": bool(b["reset"][0])} for b in batches]
  zeros = torch.zeros(s.layers, s.batch, s.hidden)
  holder = {"hidden": (zeros, zeros), "i": 0}
  losses = []

  def forward_loss(batch, hidden):
    if batch["reset"]:
      hidden = (zeros, zeros)
    logits, hidden = model(batch["inputs"], hidden)
    loss = F.cross_entropy(logits.reshape(-1, s.vocab), batch["targets"].reshape(-1))
    return loss, hidden

  def run(n: int) -> None:
    for _ in range(n):
      batch = tensors[holder["i"] % len(tensors)]
      holder["i"] += 1
      loss, hidden = forward_loss(batch, holder["hidden"])
      holder["hidden"] = tuple(h.detach() for h in hidden)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      nn.utils.clip_grad_norm_(model.parameters(), 5.0)
      opt.step()
    losses.append(loss.item())  # CPU ops are synchronous: the work is done here.

  def check() -> None:
    if not all(math.isfinite(v) for v in losses):
      raise FloatingPointError("torch: non-finite loss during the benchmark")

  def parts() -> dict[str, Callable[[int], None]]:
    batch = tensors[1]
    x = torch.randn(s.batch, s.seq_len, s.embed, requires_grad=True)
    cot = torch.randn(s.batch, s.seq_len, s.hidden)

    def fwd(n):
      with torch.no_grad():
        for _ in range(n):
          forward_loss(batch, holder["hidden"])

    def fwd_bwd(n):
      for _ in range(n):
        model.zero_grad(set_to_none=True)
        forward_loss(batch, holder["hidden"])[0].backward()

    def stack_fwd(n):
      with torch.no_grad():
        for _ in range(n):
          model.rnn(x, holder["hidden"])

    def stack_fwd_bwd(n):
      for _ in range(n):
        model.zero_grad(set_to_none=True)
        x.grad = None
        (model.rnn(x, holder["hidden"])[0] * cot).sum().backward()

    def update(n):
      for _ in range(n):
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    fwd_bwd(1)  # Leaves gradients for `update`.
    return {"forward + loss": fwd, "forward + backward (value_and_grad)": fwd_bwd,
            "LSTM stack forward": stack_fwd, "LSTM stack forward + backward": stack_fwd_bwd,
            "optimizer update (clip + adam)": update}

  return Runner(run=run, losses=losses, check=check, parts=parts)


# --- Report ---


def mmzoo_revision() -> str:
  """The checkout's commit, and whether mmzoo/ has uncommitted changes."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    git = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True,
                            check=True, timeout=10)
    commit = git(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = git(["git", "status", "--porcelain", "--", "mmzoo"]).stdout.split()
  except (OSError, subprocess.SubprocessError):
    return "unknown revision"
  changed = [p for p in dirty if p.startswith("mmzoo/")]
  return commit + (f" + uncommitted {', '.join(changed)}" if changed else "")


def main(argv) -> None:
  del argv
  import jax

  unknown = set(FRAMEWORKS.value) - {"mmzoo", "torch"}
  if unknown:
    raise app.UsageError(f"unknown frameworks {sorted(unknown)}; known: mmzoo, torch")
  from mmzoo.errors import InputError
  from mmzoo.tasks import char_lm
  from mmzoo.train import parallel

  task, s = make_task()
  try:  # Before JAX starts its backends, as the launcher does.
    parallel.split_cpu(parallel.cpu_device_count(CPU_DEVICES.value,
                                                 char_lm.cpu_split_batch_sizes(task.config)))
  except InputError as e:
    raise app.UsageError(str(e)) from e
  memory = host_memory_policy(RETAIN_MEMORY.value)
  vocab = s.vocab
  tokens = s.batch * s.seq_len
  flops = lstm_step_flops(s.batch, s.seq_len, s.embed, s.hidden, s.layers, vocab)
  it = task.train_batches()
  batches = [next(it) for _ in range(min(1 + WARMUP.value + STEPS.value * WINDOWS.value, 64))]
  versions = f"jax {jax.__version__}"
  if "torch" in FRAMEWORKS.value:
    import torch
    versions += f", torch {torch.__version__} ({os.cpu_count()} threads)"
  print(f"machine: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}, "
        f"{versions}; jax devices {jax.devices()} "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); mmzoo {mmzoo_revision()}; "
        f"host memory: {memory}")
  print(f"model: {s.layers}-layer LSTM, hidden {s.hidden}, embed {s.embed}, "
        f"vocab {vocab}; batch {s.batch} x seq_len {s.seq_len} = {tokens} tokens/step; "
        f"{flops / 1e9:.1f} GFLOP/step (matmuls, fwd+bwd)")
  print(f"timing: median of {WINDOWS.value} alternating windows x {STEPS.value} steps, "
        f"after compilation and {WARMUP.value} warm-up steps", flush=True)

  runners = {}
  for name in FRAMEWORKS.value:
    runner = mmzoo_runner(task, s, batches) if name == "mmzoo" else torch_runner(s, batches)
    start = time.perf_counter()
    runner.run(1)
    runner.compile_s = time.perf_counter() - start
    if WARMUP.value:
      runner.run(WARMUP.value)
    runners[name] = runner
  for _ in range(WINDOWS.value):
    for runner in runners.values():
      runner.run(1)  # untimed: lets the other framework's threads go idle first
      runner.per_step.append(time_window(runner.run, STEPS.value, runner.others))
  for name, r in runners.items():
    r.check()
    print(f"  {name}: first step (incl. compile) {r.compile_s:.1f} s; windows (ms/step) "
          + " ".join(f"{t * 1e3:.0f}" for t in r.per_step)
          + "; other processes' load (cores) " + " ".join(f"{o:.1f}" for o in r.others)
          + f"; loss {r.losses[0]:.3f} -> {r.losses[-1]:.3f}")
  if any(o > 0.2 for r in runners.values() for o in r.others):
    print(f"WARNING: other processes used CPU during timing (of {os.cpu_count()} cores); "
          "the numbers are contaminated, rerun on a quiet machine", flush=True)

  print()
  print("| framework | ms/step | tokens/s | GFLOP/s (matmul) | windows min-max ms |")
  print("|---|---:|---:|---:|---:|")
  step_s = {name: statistics.median(r.per_step) for name, r in runners.items()}
  for name, r in runners.items():
    print(f"| {name} | {step_s[name] * 1e3:.0f} | {tokens / step_s[name]:,.0f} "
          f"| {flops / step_s[name] / 1e9:.1f} "
          f"| {min(r.per_step) * 1e3:.0f}-{max(r.per_step) * 1e3:.0f} |")
  if len(step_s) == 2:
    print(f"\nratio mmzoo/torch (tokens/s): {step_s['torch'] / step_s['mmzoo']:.2f}", flush=True)

  if BREAKDOWN.value:
    parts = {}
    for name, r in runners.items():
      parts[name] = {part: median_call_s(run, WINDOWS.value) for part, run in r.parts().items()}
    print("\n| part (ms per call, median) | " + " | ".join(runners) + " |")
    print("|---|" + "---:|" * len(runners))
    for part in dict.fromkeys(p for d in parts.values() for p in d):
      cells = [f"{d[part][0] * 1e3:.1f}" + (" (busy machine)" if d[part][1] > 0.2 else "")
               if part in d else "-" for d in parts.values()]
      print(f"| {part} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
