r"""Beam search of Show, Attend and Tell: `mmzoo.decoding.beam_search` vs a per-image PyTorch loop.

The model is the zoo's own `ShowAttendTell` (soft attention, gate, deep output layer), built
on precomputed features: per image a 14x14 grid of ResNet features flattened to 196 regions of
dimension 2048, as the common PyTorch captioning repositories feed it. Sizes default to theirs
(word embedding, attention and LSTM all 512; vocabulary 10000). Its parameters are flax's
random init (seed 0), altered so that the next-word distribution is peaked like a trained
model's and captions end after a number of words that differs between images (5-18 tokens,
mean 11.5, at the defaults), where an untrained model's captions end at once or never
(`init_params`).

* mmzoo: what `mmzoo.tasks.captioning` runs to evaluate: encode, `init_state`, then
  `decoding.beam_search` over the model's `step` followed by log_softmax (length penalty
  none), the best hypothesis and its attention maps picked, all under one `jax.jit`; the
  search is one `lax.while_loop` over the whole batch. XLA uses its default threads (all
  cores).
* PyTorch: the same decoder step written in torch, with the same weights (one step's
  log-probs are checked against mmzoo's before timing), and the beam search of the common
  captioning repositories (e.g. "a-PyTorch-Tutorial-to-Image-Captioning", caption.py), written
  here: one image at a time, its k live hypotheses a batch of k, a Python loop over steps, a
  top-k over the flattened k * vocab scores, hypotheses that emit eos moved to the completed
  list and dropped from the batch (k shrinks), until none is live or `--max_len` tokens; the
  best completed hypothesis by total log-prob wins, and its attention maps are kept as
  caption.py keeps them. Live hypotheses at `--max_len` count as completed (truncated), as in
  mmzoo. Unlike caption.py, the attention keys (`W_a a_i`) are computed once per image, as
  mmzoo's `init_state` does, not at every step for every hypothesis (`--torch_keys_per_step`
  does that too: ~2 GFLOP more per step at k=5). Runs under `torch.inference_mode()` on
  `--torch_threads` threads (default 1: on a shared machine OpenMP threads stall at barriers).

The two searches are not the same algorithm. mmzoo keeps k hypotheses alive at every step
(the best k of the 2k best extensions that do not end) and a pool of the k best finished ones,
and stops when no live hypothesis can still beat the worst finished one of any image (exact
for sums of log-probs); the per-image loop lets a completed hypothesis take its slot with it,
so fewer hypotheses stay alive, and stops when all k slots have ended. Both score by the sum
of log-probs and most best captions agree; where they differ mmzoo's is usually the one with
the higher score (it searched more), and near-ties may go either way (float32 rounding).

Compilation is not timed, nor the first (warm-up) call of each side; every mmzoo call ends
with `jax.block_until_ready`. Timed calls alternate (mmzoo, torch, mmzoo, ...) and the
median of `--reps` calls per side is reported, with the cores other processes kept busy
during them (from /proc/stat), so that a disturbed run can be recognised.

  python benchmarks/decoding.py              # the issue's setting; ~2-3 minutes on 2 cores
  python benchmarks/decoding.py --reps=1 --batch_size=20    # a quick look
  python benchmarks/decoding.py --torch_threads=2           # on a machine of your own
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from machine import cpu_name, timed

from mmzoo import decoding
from mmzoo.models.show_attend_tell import ShowAttendTell

BATCH = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
BEAM = flags.DEFINE_integer("beam_size", 5, "Beam size K.")
MAX_LEN = flags.DEFINE_integer("max_len", 20, "Most tokens per caption (eos included).")
VOCAB = flags.DEFINE_integer("vocab_size", 10000, "Vocabulary size.")
HIDDEN = flags.DEFINE_integer("hidden_size", 512, "LSTM units.")
EMBED = flags.DEFINE_integer("embed_dim", 512, "Word embedding size.")
ATTENTION = flags.DEFINE_integer("attention_dim", 512, "Size of the projected regions.")
REGIONS = flags.DEFINE_integer("regions", 196, "Feature regions per image (a 14x14 grid).")
FEATURE_DIM = flags.DEFINE_integer("feature_dim", 2048, "Dimension of a region's feature.")
LOGIT_SCALE = flags.DEFINE_float("logit_scale", 15.0, "Multiplies the output layer's weights.")
EOS_GAIN = flags.DEFINE_float("eos_gain", 80.0, "Weight of the step-counting unit on eos.")
EOS_BIAS = flags.DEFINE_float("eos_bias", -35.0, "The eos logit's bias: how soon captions end.")
REPS = flags.DEFINE_integer("reps", 3, "Timed calls per side; the median counts.")
TORCH_THREADS = flags.DEFINE_integer("torch_threads", 1, "PyTorch intra-op threads.")
KEYS_PER_STEP = flags.DEFINE_bool(
    "torch_keys_per_step", False,
    "PyTorch: project the regions for attention at every step, for every live hypothesis, as "
    "caption.py does, rather than once per image as mmzoo does.")

BOS, EOS, PAD = decoding.BOS_ID, decoding.EOS_ID, decoding.PAD_ID


def build_model() -> ShowAttendTell:
  # As `mmzoo.tasks.captioning.build_model` builds it for precomputed features.
  return ShowAttendTell(vocab_size=VOCAB.value, embed_dim=EMBED.value,
                        hidden_size=HIDDEN.value, attention_dim=ATTENTION.value, gate=True,
                        encoder="precomputed")


def random_features(batch: int, seed: int = 1) -> np.ndarray:
  """`<float32>[batch, regions, dim]`, non-negative like post-ReLU ResNet features, each image
  with its own per-channel means (else every image's mean feature, hence h_0, is the same)."""
  rng = np.random.default_rng(seed)
  means = rng.normal(0, 1, (batch, 1, FEATURE_DIM.value))
  noise = rng.normal(0, 1, (batch, REGIONS.value, FEATURE_DIM.value))
  return np.maximum(means + noise, 0).astype(np.float32)


def init_params(model: ShowAttendTell, features: np.ndarray) -> dict:
  """Flax's random init (seed 0) made to act a little like a trained captioner: a peaked
  next-word distribution (`--logit_scale`), and eos likely only after some words.

  An untrained model's eos has the probability of any word at every step, so that by total
  log-prob a caption either ends at once or never. Here one LSTM unit counts steps instead:
  its gates are pinned open (i = f = o = 1) and its input fixed, so that its cell grows by
  0.1 per step from an image-dependent start (init_c); its output alone feeds one dimension
  of the deep output layer, which alone feeds the eos logit, with weight `--eos_gain`. With
  the defaults the most likely next word has probability ~0.4 (entropy ~2.7 nats) and best
  captions end after 5-18 tokens, at lengths that differ between images, as they do.
  """
  variables = model.init(jax.random.key(0), jnp.asarray(features[:1]),
                         jnp.zeros((1, 1), jnp.int32))
  p = jax.tree.map(lambda x: np.array(x, np.float32), variables["params"])  # writable copies
  p["l_o"]["kernel"] *= LOGIT_SCALE.value
  hidden, unit, dim = HIDDEN.value, 0, 0  # the counting unit, its output dimension
  lstm = p["lstm"]["weights"]
  gates = [unit + g * hidden for g in range(4)]  # its columns of i, f, g, o
  lstm["w_ih"][:, gates] = 0
  lstm["w_hh"][:, gates] = 0
  lstm["b_hh"][gates] = 0
  lstm["b_ih"][gates] = [10, 10, np.arctanh(0.1), 10]
  p["init_h"]["kernel"][:, unit] = 0
  p["init_h"]["bias"][unit] = 0
  p["init_c"]["kernel"][:, unit] *= 0.5
  p["init_c"]["bias"][unit] = 0
  p["embed"]["embedding"][:, dim] = 0
  p["l_z"]["kernel"][:, dim] = 0
  p["l_h"]["kernel"][:, dim] = 0
  p["l_h"]["kernel"][unit, dim] = 1
  p["l_h"]["bias"][dim] = 0
  p["l_o"]["kernel"][dim] = 0
  p["l_o"]["kernel"][:, EOS] = 0
  p["l_o"]["kernel"][dim, EOS] = EOS_GAIN.value
  p["l_o"]["bias"][EOS] += EOS_BIAS.value
  return {"params": p}


# ---------------------------------------------------------------------------------------------
# mmzoo: `CaptioningTask._decode_impl` for method "beam", under one jit.


def mmzoo_decoder(model: ShowAttendTell):
  batch, beam, max_len = BATCH.value, BEAM.value, MAX_LEN.value

  def step_fn(variables, state, tokens):
    logits, state, aux = model.apply(variables, state, tokens, method="step")
    return jax.nn.log_softmax(logits), state, aux

  @jax.jit
  def decode(variables, features):
    encoded = model.apply(variables, features.astype(jnp.float32), method="encode")
    state = model.apply(variables, encoded, method="init_state")
    out = decoding.beam_search(lambda s, t: step_fn(variables, s, t), state, batch, beam,
                               max_len, "none")
    # Hypotheses come best first: the task keeps the best and its attention maps.
    return (out.sequences[:, 0], out.scores[:, 0], out.aux["attention"][:, 0], out.num_steps)

  return decode, step_fn


# ---------------------------------------------------------------------------------------------
# PyTorch: the same decoder step, and the per-image beam search of the common repositories.


class TorchSAT:
  """`ShowAttendTell` with precomputed regions, in torch, on mmzoo's (flax's) weights."""

  def __init__(self, params: dict):
    p = params["params"]
    t = torch.from_numpy
    self.init_h = (t(p["init_h"]["kernel"]), t(p["init_h"]["bias"]))
    self.init_c = (t(p["init_c"]["kernel"]), t(p["init_c"]["bias"]))
    self.w_a = (t(p["w_a"]["kernel"]), t(p["w_a"]["bias"]))
    self.w_h = t(p["w_h"]["kernel"])
    self.score = (t(p["score"]["kernel"][:, 0]).contiguous(), t(p["score"]["bias"]))
    self.f_beta = (t(p["f_beta"]["kernel"]), t(p["f_beta"]["bias"]))
    self.embed = t(p["embed"]["embedding"])
    lstm = p["lstm"]["weights"]
    self.w_ih, self.w_hh = t(lstm["w_ih"]), t(lstm["w_hh"])
    self.b_lstm = t(lstm["b_ih"] + lstm["b_hh"])  # summed, as mmzoo's cell does
    self.l_h = (t(p["l_h"]["kernel"]), t(p["l_h"]["bias"]))
    self.l_z = t(p["l_z"]["kernel"])
    self.l_o = (t(p["l_o"]["kernel"]), t(p["l_o"]["bias"]))

  def keys(self, regions: torch.Tensor) -> torch.Tensor:
    """`W_a a_i + b`: regions `[..., R, D]` -> `[..., R, A]`."""
    return regions @ self.w_a[0] + self.w_a[1]

  def init_state(self, regions: torch.Tensor):
    """regions `[R, D]` of one image -> `(h, c)` `[1, H]` each, and the keys `[R, A]`."""
    mean = regions.mean(0, keepdim=True)
    h = torch.tanh(torch.addmm(self.init_h[1], mean, self.init_h[0]))
    c = torch.tanh(torch.addmm(self.init_c[1], mean, self.init_c[0]))
    return h, c, self.keys(regions)

  def step(self, tokens, h, c, regions, keys):
    """n hypotheses of ONE image: tokens <long>[n], h, c `[n, H]`, its regions `[R, D]` and
    keys `[R, A]` (or `[n, R, A]`) -> (log-probs `[n, V]`, h, c, attention `[n, R]`)."""
    e = torch.tanh(keys + (h @ self.w_h)[:, None]) @ self.score[0] + self.score[1]
    alpha = torch.softmax(e, dim=-1)  # [n, R]
    beta = torch.sigmoid(torch.addmm(self.f_beta[1], h, self.f_beta[0]))
    z = beta * (alpha @ regions)
    y = self.embed[tokens]
    gates = torch.cat([y, z], 1) @ self.w_ih + torch.addmm(self.b_lstm, h, self.w_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    out = y + torch.addmm(self.l_h[1], h, self.l_h[0]) + z @ self.l_z
    logits = torch.addmm(self.l_o[1], out, self.l_o[0])
    return torch.log_softmax(logits, dim=-1), h, c, alpha


def torch_caption(model: TorchSAT, regions: torch.Tensor, k: int, max_len: int):
  """Beam search of one image as caption.py does it; returns (tokens, score, attention)."""
  vocab = model.embed.shape[0]
  h, c, keys = model.init_state(regions)
  h, c = h.expand(k, -1), c.expand(k, -1)
  prev = torch.full((k,), BOS, dtype=torch.long)
  seqs = torch.empty((k, 0), dtype=torch.long)  # tokens of the live hypotheses
  alphas = torch.empty((k, 0, regions.shape[0]))  # their attention maps
  scores = torch.zeros(k)  # their total log-probs
  done_seqs, done_alphas, done_scores = [], [], []
  for t in range(max_len):
    if KEYS_PER_STEP.value:  # as caption.py: W_a a_i again, for each live hypothesis
      keys = model.keys(regions.expand(k, -1, -1))
    log_probs, h, c, alpha = model.step(prev, h, c, regions, keys)
    candidates = scores[:, None] + log_probs
    if t == 0:  # the k rows are the same (empty) hypothesis: extend one
      top_scores, top = candidates[0].topk(k)
    else:
      top_scores, top = candidates.view(-1).topk(k)
    parent, words = top // vocab, top % vocab
    seqs = torch.cat([seqs[parent], words[:, None]], 1)
    alphas = torch.cat([alphas[parent], alpha[parent][:, None]], 1)
    ended = words == EOS
    if t == max_len - 1:  # the last step: live hypotheses complete too, truncated
      ended = torch.ones_like(ended)
    num_ended = int(ended.sum())
    if num_ended:
      done_seqs += list(seqs[ended])
      done_alphas += list(alphas[ended])
      done_scores += top_scores[ended].tolist()
    k -= num_ended
    if k == 0:
      break
    live = ~ended
    seqs, alphas, scores, prev = seqs[live], alphas[live], top_scores[live], words[live]
    h, c = h[parent[live]], c[parent[live]]
  best = int(np.argmax(done_scores))
  return done_seqs[best], done_scores[best], done_alphas[best]


def torch_decoder(model: TorchSAT, features: np.ndarray):
  regions = torch.from_numpy(features)
  beam, max_len = BEAM.value, MAX_LEN.value

  @torch.inference_mode()
  def decode():
    seqs = np.full((len(features), max_len), PAD, np.int32)
    scores = np.zeros(len(features), np.float32)
    attention = np.zeros((len(features), max_len, features.shape[1]), np.float32)
    for b in range(len(features)):
      tokens, scores[b], alphas = torch_caption(model, regions[b], beam, max_len)
      seqs[b, :len(tokens)] = tokens.numpy()
      attention[b, :len(tokens)] = alphas.numpy()
    return seqs, scores, attention

  return decode


def check_step(model, step_fn, torch_model, variables, features) -> float:
  """Largest |log-prob difference| of mmzoo's and torch's step: two steps, up to 5 images."""
  n = min(5, len(features))
  encoded = model.apply(variables, jnp.asarray(features[:n]), method="encode")
  state = model.apply(variables, encoded, method="init_state")
  tokens = np.full((n,), BOS, np.int64)
  regions = torch.from_numpy(features[:n])
  worst = 0.0
  with torch.inference_mode():
    torch_states = [torch_model.init_state(r) for r in regions]  # (h, c, keys) per image
    for _ in range(2):
      log_probs, state, _ = step_fn(variables, state, jnp.asarray(tokens, jnp.int32))
      log_probs = np.asarray(log_probs)
      for i, (h, c, keys) in enumerate(torch_states):
        torch_lp, h, c, _ = torch_model.step(torch.tensor(tokens[i:i + 1]), h, c, regions[i],
                                             keys)
        torch_states[i] = (h, c, keys)
        worst = max(worst, float(np.max(np.abs(log_probs[i] - torch_lp[0].numpy()))))
      tokens = np.argmax(log_probs, axis=-1)
  return worst


# ---------------------------------------------------------------------------------------------


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  torch.set_num_threads(TORCH_THREADS.value)
  batch, beam, max_len = BATCH.value, BEAM.value, MAX_LEN.value
  print(f"machine: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}; "
        f"jax {jax.__version__} ({jax.default_backend()}); torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, attention keys "
        f"{'every step' if KEYS_PER_STEP.value else 'once per image'})")
  print(f"Show, Attend and Tell: regions {REGIONS.value} x {FEATURE_DIM.value}, embed "
        f"{EMBED.value}, attention {ATTENTION.value}, LSTM {HIDDEN.value}, vocab "
        f"{VOCAB.value}, logit_scale {LOGIT_SCALE.value}, eos_gain {EOS_GAIN.value}, eos_bias "
        f"{EOS_BIAS.value}; beam "
        f"{beam}, batch {batch}, max_len {max_len}, float32; median of {REPS.value} calls "
        "after compilation and a warm-up call")

  features = random_features(batch)
  model = build_model()
  variables = init_params(model, features)
  decode, step_fn = mmzoo_decoder(model)
  torch_model = TorchSAT(variables)
  step_diff = check_step(model, jax.jit(step_fn), torch_model, variables, features)
  print(f"one step's log-probs, mmzoo vs torch: max |difference| {step_diff:.1e} (two steps "
        "of up to 5 images)")
  if step_diff > 1e-3:  # float32 rounding gives ~1e-5 on log-probs of magnitude ~50
    raise SystemExit("the torch port does not compute mmzoo's step")

  jax_args = (jax.device_put(variables), jax.device_put(features))
  start = time.perf_counter()
  compiled = decode.lower(*jax_args).compile()
  compile_s = time.perf_counter() - start

  def run_mmzoo():
    return jax.block_until_ready(compiled(*jax_args))

  run_torch = torch_decoder(torch_model, features)
  results = {"mmzoo": run_mmzoo(), "torch": run_torch()}  # the untimed warm-up calls
  times = {"mmzoo": [], "torch": []}
  others = {"mmzoo": [], "torch": []}
  for _ in range(REPS.value):
    for name, run in (("mmzoo", run_mmzoo), ("torch", run_torch)):
      ms, busy = timed(run)
      times[name].append(ms)
      others[name].append(busy)

  (j_seqs, j_scores, j_att, steps), (t_seqs, t_scores, t_att) = results["mmzoo"], results["torch"]
  j_seqs, j_scores, j_att = np.asarray(j_seqs), np.asarray(j_scores), np.asarray(j_att)
  same = np.all(j_seqs == t_seqs, axis=1)
  lengths = np.sum(j_seqs != PAD, axis=1)
  print(f"mmzoo: compiled in {compile_s:.1f} s; {int(steps)} of {max_len} steps run; best "
        f"captions of {lengths.min()}-{lengths.max()} tokens (mean {lengths.mean():.1f}), "
        f"{int(np.sum((j_seqs[:, -1] != PAD) & (j_seqs[:, -1] != EOS)))} truncated")
  print(f"same best caption: {int(same.sum())}/{batch}; where they agree, max |score "
        f"difference| {np.max(np.abs(j_scores - t_scores)[same], initial=0):.1e}, attention "
        f"{np.max(np.abs(j_att - t_att)[same], initial=0):.1e}; where they differ, mmzoo's "
        f"scores higher for {int(np.sum((j_scores > t_scores)[~same]))}, torch's for "
        f"{int(np.sum((j_scores < t_scores)[~same]))}")
  jax_ms, torch_ms = statistics.median(times["mmzoo"]), statistics.median(times["torch"])
  print()
  print("| | ms per batch (median) | min-max | images/s | other processes' cores |")
  print("|---|---:|---:|---:|---:|")
  for name, ms in (("mmzoo", jax_ms), ("torch", torch_ms)):
    print(f"| {name} | {ms:.0f} | {min(times[name]):.0f}-{max(times[name]):.0f} | "
          f"{1e3 * batch / ms:.1f} | {max(others[name]):.2f} |")
  print(f"\ntorch / mmzoo: {torch_ms / jax_ms:.2f}x (target >= 10x: "
        f"{'met' if torch_ms / jax_ms >= 10 else 'not met'})")
  if max(max(others["mmzoo"]), max(others["torch"])) > 0.3:
    print("warning: other processes used the CPU during timed calls; the timings are disturbed")


if __name__ == "__main__":
  app.run(main)
