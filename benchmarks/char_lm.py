r"""Training throughput of the default char model: mmzoo's train step vs PyTorch.

Both frameworks train the same model on the same batches in one run: an
embedding, a stack of LSTM layers and a vocabulary projection, with softmax
cross-entropy, truncated BPTT (the carry of one chunk, without its gradient,
starts the next chunk of each stream), global-norm gradient clipping and Adam.

* mmzoo: `CharLMTask` built from `mmzoo/configs/char_rnn.py` (with the sizes
  below overriding the config) and `mmzoo.train.loop.train_step`, jitted
  exactly as the trainer does it (one-device mesh, shardings, donated state).
* PyTorch: `nn.Embedding -> nn.LSTM(batch_first=True) -> nn.Linear`,
  `F.cross_entropy`, detached hidden carry, `clip_grad_norm_`,
  `torch.optim.Adam`, on `os.cpu_count()` threads.

Compilation and warm-up steps are not timed; each timed window of `--steps`
steps ends with `block_until_ready`, and the median window is reported.
Batches come from the config's corpus (the built-in one by default) and are
made before timing, so the data pipeline is not measured.

  python benchmarks/char_lm.py                       # default config sizes, < 4 minutes
  python benchmarks/char_lm.py --hidden_size=128 --windows=3 --steps=3   # quick
  python benchmarks/char_lm.py --breakdown           # also time forward, backward, optimizer

FLOP counts include only the matmuls: per LSTM layer and step of one stream,
2 * 4H * (F + H) forward (F the layer's input size), plus 2 * H * V for the
output layer; forward + backward is counted as 3x the forward.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable

from absl import app, flags

HIDDEN = flags.DEFINE_integer("hidden_size", 512, "LSTM units per layer.")
LAYERS = flags.DEFINE_integer("num_layers", 2, "Stacked LSTM layers.")
EMBED = flags.DEFINE_integer("embed_dim", 64, "Character embedding size.")
BATCH = flags.DEFINE_integer("batch_size", 64, "Parallel streams per step.")
SEQ_LEN = flags.DEFINE_integer("seq_len", 100, "Characters per TBPTT chunk.")
STEPS = flags.DEFINE_integer("steps", 5, "Training steps per timed window.")
WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows; the median is reported.")
WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
MAX_CHARS = flags.DEFINE_integer(
    "max_chars", None, "Characters of the built-in corpus to read (default: the config's).")
FRAMEWORKS = flags.DEFINE_list("frameworks", ["mmzoo", "torch"], "Which to run, in order.")
BREAKDOWN = flags.DEFINE_bool(
    "breakdown", False, "Also time parts of a step: forward+loss, forward+backward, "
    "optimizer update, and the step without finite checks.")


def lstm_step_flops(batch: int, seq_len: int, embed: int, hidden: int, layers: int,
                    vocab: int) -> float:
  """Matmul FLOPs of one training step (forward + backward = 3x forward)."""
  forward = 0
  for layer in range(layers):
    in_features = embed if layer == 0 else hidden
    forward += 2 * batch * seq_len * 4 * hidden * (in_features + hidden)
  forward += 2 * batch * seq_len * hidden * vocab
  return 3.0 * forward


def time_windows(run_steps: Callable[[int], None], steps: int, windows: int,
                 warmup: int) -> list[float]:
  """Seconds per step of each timed window; `run_steps(n)` must block until done."""
  run_steps(max(warmup, 1))  # Compiles (JAX) and warms caches; not timed.
  per_step = []
  for _ in range(windows):
    start = time.perf_counter()
    run_steps(steps)
    per_step.append((time.perf_counter() - start) / steps)
  return per_step


def make_task():
  from mmzoo.configs import char_rnn as char_rnn_config
  from mmzoo.tasks.char_lm import CharLMTask

  config = char_rnn_config.get_config()
  config.model.cell = "lstm"
  config.model.hidden_size = HIDDEN.value
  config.model.num_layers = LAYERS.value
  config.model.embed_dim = EMBED.value
  config.data.batch_size = BATCH.value
  config.data.seq_len = SEQ_LEN.value
  if MAX_CHARS.value is not None:
    config.data.max_chars = MAX_CHARS.value
  return CharLMTask(config)


def host_batches(task, count: int) -> list[dict]:
  """`count` consecutive TBPTT batches (numpy), the first with `reset` True."""
  it = task.train_batches()
  return [next(it) for _ in range(count)]


# --- mmzoo ---


def bench_mmzoo(task, batches: list[dict]) -> dict:
  import jax

  from mmzoo.train import loop, parallel

  mesh = parallel.make_mesh()
  tx, init_fn, _, shardings = loop.abstract_train_state(task, mesh)
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(task.config.seed))
  by_batch = parallel.batch_sharding(mesh)
  step_fn = jax.jit(functools.partial(loop.train_step, tx, task.loss_fn),
                    in_shardings=(shardings, by_batch), out_shardings=(shardings, None),
                    donate_argnums=0)
  device_batches = [parallel.global_batch(b, mesh) for b in batches]
  holder = {"state": state, "i": 0, "losses": []}

  def run_steps(n: int) -> None:
    state, metrics = holder["state"], None
    for _ in range(n):
      state, metrics = step_fn(state, device_batches[holder["i"] % len(device_batches)])
      holder["i"] += 1
    jax.block_until_ready((state, metrics))
    holder["state"] = state
    loss_sum, count = metrics["loss"]
    holder["losses"].append(float(loss_sum) / float(count))

  compile_start = time.perf_counter()
  run_steps(1)
  compile_s = time.perf_counter() - compile_start
  per_step = time_windows(run_steps, STEPS.value, WINDOWS.value, WARMUP.value)
  if int(jax.device_get(holder["state"].bad_step)) >= 0:
    raise FloatingPointError("mmzoo: non-finite loss during the benchmark")
  result = {"per_step": per_step, "compile_s": compile_s, "first_loss": holder["losses"][0],
            "last_loss": holder["losses"][-1]}
  if BREAKDOWN.value:
    result["parts"] = mmzoo_breakdown(task, tx, holder["state"], device_batches[1])
  return result


def mmzoo_breakdown(task, tx, state, batch) -> dict[str, float]:
  """Seconds per call of parts of the train step (each jitted on its own)."""
  import jax
  import optax

  from mmzoo.train import loop

  rng = jax.random.PRNGKey(1)
  params, carry = state.params, state.task_state

  def loss(p):
    return task.loss_fn(p, carry, batch, rng)

  grad = jax.jit(lambda p: jax.value_and_grad(loss, has_aux=True)(p)[1])

  def bare_step(p, opt_state):
    (_, (_, _)), g = jax.value_and_grad(loss, has_aux=True)(p)
    updates, opt_state = tx.update(g, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  def update(g, opt_state, p):
    updates, opt_state = tx.update(g, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, optax.global_norm(g)

  grads = grad(params)
  parts = {
      "forward + loss": (jax.jit(lambda p: loss(p)[0]), (params,)),
      "forward + backward": (grad, (params,)),
      "optimizer update (clip + adam)": (jax.jit(update), (grads, state.opt_state, params)),
      "fwd + bwd + update, no finite checks": (jax.jit(bare_step), (params, state.opt_state)),
      "full train_step": (jax.jit(functools.partial(loop.train_step, tx, task.loss_fn)),
                          (state, batch)),
  }
  out = {}
  for name, (fn, args) in parts.items():

    def run_steps(n, fn=fn, args=args):
      for _ in range(n):
        r = fn(*args)
      jax.block_until_ready(r)

    out[name] = statistics.median(time_windows(run_steps, STEPS.value, WINDOWS.value, 1))
  return out


# --- PyTorch ---


def bench_torch(vocab_size: int, batches: list[dict]) -> dict:
  import torch
  import torch.nn.functional as F
  from torch import nn

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)

  class CharLSTM(nn.Module):

    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab_size, EMBED.value)
      self.rnn = nn.LSTM(EMBED.value, HIDDEN.value, LAYERS.value, batch_first=True)
      self.out = nn.Linear(HIDDEN.value, vocab_size)

    def forward(self, tokens, hidden):
      h, hidden = self.rnn(self.embed(tokens), hidden)
      return self.out(h), hidden

  model = CharLSTM()
  opt = torch.optim.Adam(model.parameters(), lr=2e-3, eps=1e-8)
  tensors = [{"inputs": torch.from_numpy(b["inputs"]).long(),
              "targets": torch.from_numpy(b["targets"]).long(),
              "reset": bool(b["reset"][0])} for b in batches]
  zeros = torch.zeros(LAYERS.value, BATCH.value, HIDDEN.value)
  holder = {"hidden": (zeros, zeros), "i": 0, "losses": []}

  def forward_loss(batch, hidden):
    if batch["reset"]:
      hidden = (zeros, zeros)
    logits, hidden = model(batch["inputs"], hidden)
    loss = F.cross_entropy(logits.reshape(-1, vocab_size), batch["targets"].reshape(-1))
    return loss, hidden

  def run_steps(n: int) -> None:
    for _ in range(n):
      batch = tensors[holder["i"] % len(tensors)]
      holder["i"] += 1
      loss, hidden = forward_loss(batch, holder["hidden"])
      holder["hidden"] = tuple(h.detach() for h in hidden)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      nn.utils.clip_grad_norm_(model.parameters(), 5.0)
      opt.step()
    holder["losses"].append(loss.item())  # CPU ops are synchronous; this is a formality.

  per_step = time_windows(run_steps, STEPS.value, WINDOWS.value, WARMUP.value + 1)
  result = {"per_step": per_step, "first_loss": holder["losses"][0],
            "last_loss": holder["losses"][-1]}
  if BREAKDOWN.value:
    batch = tensors[1]

    def fwd(n):
      with torch.no_grad():
        for _ in range(n):
          forward_loss(batch, holder["hidden"])

    def fwd_bwd(n):
      for _ in range(n):
        opt.zero_grad(set_to_none=True)
        forward_loss(batch, holder["hidden"])[0].backward()

    def update(n):
      for _ in range(n):
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    result["parts"] = {
        "forward + loss": statistics.median(time_windows(fwd, STEPS.value, WINDOWS.value, 1)),
        "forward + backward": statistics.median(
            time_windows(fwd_bwd, STEPS.value, WINDOWS.value, 1)),
        "optimizer update (clip + adam)": statistics.median(
            time_windows(update, STEPS.value, WINDOWS.value, 1)),
    }
  return result


# --- Report ---


def main(argv) -> None:
  del argv
  import jax

  task = make_task()
  vocab = task.vocab.size
  tokens = BATCH.value * SEQ_LEN.value
  flops = lstm_step_flops(BATCH.value, SEQ_LEN.value, EMBED.value, HIDDEN.value, LAYERS.value,
                          vocab)
  total_steps = 1 + max(WARMUP.value, 1) + STEPS.value * WINDOWS.value
  batches = host_batches(task, min(total_steps, 64))
  versions = {"jax": jax.__version__}
  try:
    import torch
    versions["torch"] = torch.__version__
  except ImportError:
    pass
  print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; jax devices {jax.devices()}")
  print(f"model: {LAYERS.value}-layer LSTM, hidden {HIDDEN.value}, embed {EMBED.value}, "
        f"vocab {vocab}; batch {BATCH.value} x seq_len {SEQ_LEN.value} = {tokens} tokens/step; "
        f"{flops / 1e9:.1f} GFLOP/step (matmuls, fwd+bwd)")
  print(f"timing: median of {WINDOWS.value} windows x {STEPS.value} steps, "
        f"after compilation and {WARMUP.value} warm-up steps", flush=True)

  results = {}
  for name in FRAMEWORKS.value:
    if name == "mmzoo":
      results[name] = bench_mmzoo(task, batches)
    elif name == "torch":
      results[name] = bench_torch(vocab, batches)
    else:
      raise app.UsageError(f"unknown framework {name!r}")
    r = results[name]
    step_s = statistics.median(r["per_step"])
    r["step_s"] = step_s
    extra = f", compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
    print(f"  {name}: {step_s * 1e3:.0f} ms/step (windows: "
          + " ".join(f"{s * 1e3:.0f}" for s in r["per_step"])
          + f"), loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}{extra}", flush=True)

  print()
  print("| framework | ms/step | tokens/s | GFLOP/s (matmul) | spread (min-max ms) |")
  print("|---|---:|---:|---:|---:|")
  for name, r in results.items():
    step_s = r["step_s"]
    print(f"| {name} | {step_s * 1e3:.0f} | {tokens / step_s:,.0f} | {flops / step_s / 1e9:.1f} "
          f"| {min(r['per_step']) * 1e3:.0f}-{max(r['per_step']) * 1e3:.0f} |")
  if "mmzoo" in results and "torch" in results:
    ratio = results["torch"]["step_s"] / results["mmzoo"]["step_s"]
    print(f"\nratio mmzoo/torch (tokens/s): {ratio:.2f}")
  if BREAKDOWN.value:
    print("\n| part | " + " | ".join(f"{n} ms" for n in results) + " |")
    print("|---|" + "---:|" * len(results))
    names = list(dict.fromkeys(p for r in results.values() for p in r.get("parts", {})))
    for part in names:
      cells = [f"{r['parts'][part] * 1e3:.0f}" if part in r.get("parts", {}) else "-"
               for r in results.values()]
      print(f"| {part} | " + " | ".join(cells) + " |")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


if __name__ == "__main__":
  app.run(main)
