r"""Beam search time per batch: `mmzoo.decoding.beam_search` vs the same search in PyTorch.

The decoder is a captioning-style LSTM step written out here in both frameworks
with the same random weights: token embedding (vocab 10000 x 512), one LSTM
cell (512 units, PyTorch's gate order i, f, g, o), a 512 x 10000 output layer
and log_softmax; its state starts from a random "image" vector per example.

* mmzoo: `decoding.beam_search` over a `jnp` step closed over the weights, the
  whole search under one `jax.jit` (a `lax.while_loop`).
* PyTorch: the same algorithm written batched in torch below (under
  `torch.inference_mode()`): per step the 2 * beam best extensions of each
  image, eos ones among the best `beam` go to the finished pool, the best
  `beam` that do not end stay alive, state reordered by ancestry, and the same
  exact early stop, checked on the host each step (as any eager beam search does).

Both search the same hypotheses, so their best sequences are compared as well
(float32 rounding differs between the frameworks, so a near-tie may go either
way). Compilation and `--warmup` calls are not timed; every mmzoo call ends with
`jax.block_until_ready`. The `--reps` calls of each framework run in `--rounds`
alternating blocks (mmzoo, torch, mmzoo, ...), each block after one untimed call,
and the median call is reported, with the cores other processes kept busy
meanwhile (from /proc/stat) so that a disturbed run can be recognised. PyTorch runs
on all cores unless `--torch_threads` says otherwise; when another process holds a
core, its OpenMP threads stall at barriers (a batch took 3.6 s on 2 threads against
0.53 s on 1), so compare such runs with `--torch_threads=1`.

  python benchmarks/decoding_lstm.py                  # beams 3 and 5, ~1-2 minutes on 2 cores
  python benchmarks/decoding_lstm.py --beams=3 --reps=4 --rounds=2
  python benchmarks/decoding_lstm.py --torch_threads=1      # on a machine shared with other jobs
  python benchmarks/decoding_lstm.py --length_penalty=gnmt --eos_bias=12   # early stops (11 steps)
"""

from __future__ import annotations

import functools
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from machine import alternating, cpu_name

from mmzoo import decoding

BEAMS = flags.DEFINE_list("beams", ["3", "5"], "Beam sizes to time.")
BATCH = flags.DEFINE_integer("batch_size", 50, "Images per batch.")
MAX_LEN = flags.DEFINE_integer("max_len", 16, "Most tokens per hypothesis (eos included).")
VOCAB = flags.DEFINE_integer("vocab_size", 10000, "Vocabulary size.")
HIDDEN = flags.DEFINE_integer("hidden_size", 512, "LSTM units (= embedding size).")
EOS_BIAS = flags.DEFINE_float(
    "eos_bias", 8.0, "Added to the eos logit: how soon hypotheses end (the early stop).")
PENALTY = flags.DEFINE_enum("length_penalty", "none", ["none", "average", "gnmt"],
                            "Length normalisation of finished hypotheses.")
REPS = flags.DEFINE_integer("reps", 10, "Timed calls per framework; the median counts.")
ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating blocks the timed calls are split into.")
WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "Where PyTorch runs (cpu, cuda).")
TORCH_THREADS = flags.DEFINE_integer("torch_threads", None, "PyTorch threads (default: all cores).")

try:
  import torch
except ImportError:  # pragma: no cover - depends on the environment
  torch = None

BOS, EOS, PAD = decoding.BOS_ID, decoding.EOS_ID, decoding.PAD_ID
ALPHA = 0.6


def random_weights(vocab: int, hidden: int, eos_bias: float, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  bound = 1.0 / math.sqrt(hidden)

  def u(*shape, scale=1.0):
    return (rng.uniform(-bound, bound, shape) * scale).astype(np.float32)

  b_out = np.zeros(vocab, np.float32)
  b_out[EOS] = eos_bias
  # A larger output scale than PyTorch's init, so that the next-token distribution is peaked
  # like a trained model's rather than nearly uniform over 10000 tokens.
  return {"embed": rng.normal(0, 1, (vocab, hidden)).astype(np.float32),
          "w_ih": u(hidden, 4 * hidden), "w_hh": u(hidden, 4 * hidden), "b": u(4 * hidden),
          "w_out": u(hidden, vocab, scale=40.0), "b_out": b_out}


def image_states(batch: int, hidden: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  h = np.tanh(rng.normal(0, 1, (batch, hidden))).astype(np.float32)
  return h, np.zeros_like(h)


# ---------------------------------------------------------------------------------------------
# mmzoo.


def lstm_step(weights: dict, state: tuple[jax.Array, jax.Array], tokens: jax.Array):
  """`(<float32>[n, vocab] log-probs, (h, c), None)` for `tokens` <int32>[n]."""
  h, c = state
  gates = weights["embed"][tokens] @ weights["w_ih"] + h @ weights["w_hh"] + weights["b"]
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  logits = h @ weights["w_out"] + weights["b_out"]
  return jax.nn.log_softmax(logits, axis=-1), (h, c), None


def mmzoo_search(weights: dict, h0: np.ndarray, c0: np.ndarray, beam: int):
  weights = jax.tree.map(jnp.asarray, weights)
  state = (jnp.asarray(h0), jnp.asarray(c0))

  @jax.jit
  def search(weights, state):
    return decoding.beam_search(functools.partial(lstm_step, weights), state,
                                batch_size=h0.shape[0], beam_size=beam, max_len=MAX_LEN.value,
                                length_penalty=PENALTY.value, alpha=ALPHA)

  start = time.perf_counter()
  compiled = search.lower(weights, state).compile()
  compile_s = time.perf_counter() - start

  def run():
    out = jax.block_until_ready(compiled(weights, state))
    return (np.asarray(out.sequences), np.asarray(out.normalized_scores), int(out.num_steps))

  return run, compile_s


# ---------------------------------------------------------------------------------------------
# PyTorch: the same search, written batched in torch.


def torch_search(weights: dict, h0: np.ndarray, c0: np.ndarray, beam: int):
  device = torch.device(TORCH_DEVICE.value)
  w = {k: torch.from_numpy(v).to(device) for k, v in weights.items()}
  h0, c0 = torch.from_numpy(h0).to(device), torch.from_numpy(c0).to(device)
  max_len, vocab = MAX_LEN.value, w["b_out"].shape[0]

  def normalizer(length: int) -> float:
    return {"none": 1.0, "average": float(length),
            "gnmt": ((5.0 + length) / 6.0) ** ALPHA}[PENALTY.value]

  def step(tokens, h, c):
    gates = w["embed"][tokens] @ w["w_ih"] + h @ w["w_hh"] + w["b"]
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return torch.log_softmax(h @ w["w_out"] + w["b_out"], dim=-1), h, c

  @torch.inference_mode()
  def run():
    b, k = h0.shape[0], beam
    rows = torch.arange(b, device=device)[:, None]
    h, c = h0.repeat_interleave(k, 0), c0.repeat_interleave(k, 0)
    tokens = torch.full((b * k,), BOS, dtype=torch.long, device=device)
    alive_scores = torch.full((b, k), -math.inf, device=device)
    alive_scores[:, 0] = 0
    alive_seqs = torch.full((b, k, max_len), PAD, dtype=torch.long, device=device)
    fin_scores = torch.full((b, k), -math.inf, device=device)
    fin_norm = fin_scores.clone()
    fin_seqs = alive_seqs.clone()
    rank = torch.arange(2 * k, device=device)
    t = 0
    while t < max_len:
      best = alive_scores.max(1).values
      bound = torch.maximum(best / normalizer(t + 1), best / normalizer(max_len))
      if not bool((bound > fin_norm.min(1).values).any()):
        break
      log_probs, h, c = step(tokens, h, c)
      cand = (alive_scores[:, :, None] + log_probs.view(b, k, vocab)).view(b, k * vocab)
      top_scores, top = cand.topk(2 * k, dim=1)
      is_eos = top % vocab == EOS
      # Finished: the eos extensions among the best k.
      ended = torch.where(is_eos[:, :k], top_scores[:, :k], -math.inf)
      ended_seqs = alive_seqs[rows, top[:, :k] // vocab]
      ended_seqs[:, :, t] = EOS
      pool_norm = torch.cat([fin_norm, ended / normalizer(t + 1)], 1)
      keep = pool_norm.topk(k, dim=1).indices
      fin_norm = pool_norm.gather(1, keep)
      fin_scores = torch.cat([fin_scores, ended], 1).gather(1, keep)
      fin_seqs = torch.cat([fin_seqs, ended_seqs], 1)[rows, keep]
      # Alive: the best k that do not end.
      first = (-(rank + 2 * k * is_eos)).topk(k, dim=1).indices
      chosen = top.gather(1, first)
      parent, tokens = chosen // vocab, chosen % vocab
      alive_scores = top_scores.gather(1, first)
      alive_seqs = alive_seqs[rows, parent]
      alive_seqs[:, :, t] = tokens
      flat = (rows * k + parent).view(-1)
      h, c, tokens = h[flat], c[flat], tokens.view(-1)
      t += 1
    if t == max_len:  # alive hypotheses are complete, truncated ones
      pool_norm = torch.cat([fin_norm, alive_scores / normalizer(max_len)], 1)
      keep = pool_norm.topk(k, dim=1).indices
      fin_norm = pool_norm.gather(1, keep)
      fin_seqs = torch.cat([fin_seqs, alive_seqs], 1)[rows, keep]
    return fin_seqs.cpu().numpy(), fin_norm.cpu().numpy(), t

  return run


# ---------------------------------------------------------------------------------------------


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  threads = os.cpu_count() or 1
  if torch is not None:
    torch.set_num_threads(TORCH_THREADS.value or threads)
  print(f"machine: {cpu_name()}, {threads} cores; python {platform.python_version()}; "
        f"jax {jax.__version__} ({jax.devices()[0].device_kind}, {jax.default_backend()})"
        + (f"; torch {torch.__version__} ({TORCH_DEVICE.value}, {torch.get_num_threads()} "
           "threads)" if torch is not None else "; torch not installed"))
  print(f"shape: batch {BATCH.value}, max_len {MAX_LEN.value}, vocab {VOCAB.value}, "
        f"LSTM {HIDDEN.value}, float32, length_penalty {PENALTY.value}, eos_bias "
        f"{EOS_BIAS.value}; median of {REPS.value} calls ({ROUNDS.value} alternating blocks) "
        f"after compilation and {WARMUP.value} warm-up calls")
  weights = random_weights(VOCAB.value, HIDDEN.value, EOS_BIAS.value)
  h0, c0 = image_states(BATCH.value, HIDDEN.value)

  rows = []
  for beam in map(int, BEAMS.value):
    jax_run, compile_s = mmzoo_search(weights, h0, c0, beam)
    runs = {"mmzoo": jax_run}
    if torch is not None:
      runs["torch"] = torch_search(weights, h0, c0, beam)
    results = {name: run() for name, run in runs.items()}
    for run in runs.values():
      for _ in range(WARMUP.value):
        run()
    times, others = alternating(runs, REPS.value, ROUNDS.value)
    row = {"beam": beam, "compile_s": compile_s, "steps": results["mmzoo"][2]}
    for name in runs:
      row[name] = statistics.median(times[name])
      row[name + "_others"] = max(others[name])
    if "torch" in results:
      (js, jn, _), (ts, tn, tsteps) = results["mmzoo"], results["torch"]
      row["torch_steps"] = tsteps
      row["same_best"] = int(np.sum(np.all(js[:, 0] == ts[:, 0], axis=-1)))
      row["same_all"] = int(np.sum(np.all(js == ts, axis=-1)))
      row["score_diff"] = float(np.max(np.abs(np.where(np.isfinite(jn), jn - tn, 0))))
    rows.append(row)

  b = BATCH.value
  print()
  print("| beam | steps | mmzoo ms/batch | mmzoo images/s | torch ms/batch | torch images/s "
        "| torch / mmzoo | same best (of batch) | same hypotheses | max score diff |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for row in rows:
    jax_ms, torch_ms = row["mmzoo"], row.get("torch")
    cells = [f"{row['beam']}", f"{row['steps']}", f"{jax_ms:.1f}", f"{1e3 * b / jax_ms:.0f}"]
    if torch_ms is not None:
      cells += [f"{torch_ms:.1f}", f"{1e3 * b / torch_ms:.0f}", f"{torch_ms / jax_ms:.2f}",
                f"{row['same_best']}/{b}", f"{row['same_all']}/{b * row['beam']}",
                f"{row['score_diff']:.1e}"]
    else:
      cells += ["-"] * 6
    print("| " + " | ".join(cells) + " |")
  print()
  for row in rows:
    print(f"beam {row['beam']}: mmzoo compile {row['compile_s']:.1f} s; steps mmzoo "
          f"{row['steps']}, torch {row.get('torch_steps', '-')}; most cores busy with other "
          f"processes during a timed call: mmzoo {row['mmzoo_others']:.2f}"
          + (f", torch {row['torch_others']:.2f}" if "torch_others" in row else ""))
  if any(max(row.get("mmzoo_others", 0), row.get("torch_others", 0)) > 0.3 for row in rows):
    print("warning: other processes used the CPU during timed calls; the timings are disturbed")


if __name__ == "__main__":
  app.run(main)
