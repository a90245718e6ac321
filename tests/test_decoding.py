"""mmzoo.decoding against independent references: Python loops, brute force, numpy.

Two toy decoders are defined here twice, once in jax (the `step_fn` under test)
and once in float64 numpy, one hypothesis at a time (what the references call):

* `RNN`: h' = tanh(E[y] + U h + c_image), log p(y' | ...) = log_softmax(O h' + bias
  + ramp * step * [y' = eos]), and an "attention" aux softmax(A h') that depends on
  the hidden state, so beam ancestry and state reordering are checked through it;
* `Markov`: a random transition table per image, log p(y' | y) = table[image, y], for
  sampling tests where probabilities are easy to write down.

The state of both counts steps and holds per-image leaves, so it is tiled over beams.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mmzoo import decoding

PAD, BOS, EOS = 0, 1, 2


def np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_length_penalty(kind: str, length: int, alpha: float) -> float:
  return {"none": 1.0, "average": float(length), "gnmt": ((5 + length) / 6) ** alpha}[kind]


class RNN:
  """A tiny random RNN decoder with one context vector per image."""

  def __init__(self, seed: int, images: int, vocab: int = 5, hidden: int = 8, regions: int = 3,
               eos_bias: float = 0.0, eos_ramp: float = 0.0, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    self.vocab = vocab
    self.embed = rng.normal(size=(vocab, hidden))
    self.recur = rng.normal(size=(hidden, hidden)) / math.sqrt(hidden)
    self.context = rng.normal(size=(images, hidden))
    self.out = rng.normal(size=(hidden, vocab)) * scale / math.sqrt(hidden)
    self.bias = np.zeros(vocab)
    self.bias[EOS] = eos_bias
    self.ramp = np.zeros(vocab)
    self.ramp[EOS] = eos_ramp
    self.attend = rng.normal(size=(hidden, regions)) * 2

  # The reference: one hypothesis, float64.
  def np_init(self, image: int):
    return np.zeros(self.embed.shape[1]), self.context[image], 0

  def np_step(self, state, token: int):
    h, c, count = state
    h = np.tanh(self.embed[token] + h @ self.recur + c)
    log_probs = np_log_softmax(h @ self.out + self.bias + self.ramp * count)
    scores = h @ self.attend
    attention = np.exp(scores - scores.max())
    return log_probs, (h, c, count + 1), {"attention": attention / attention.sum()}

  # Under test: rows of images, jax.
  def init_state(self, images) -> dict:
    images = np.asarray(images)
    return {"h": jnp.zeros((len(images), self.embed.shape[1])),
            "context": jnp.asarray(self.context[images], jnp.float32),
            "count": jnp.zeros((len(images),), jnp.int32)}

  def step_fn(self, state, tokens):
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    h = jnp.tanh(f32(self.embed)[tokens] + state["h"] @ f32(self.recur) + state["context"])
    logits = (h @ f32(self.out) + f32(self.bias)
              + f32(self.ramp) * state["count"][:, None].astype(jnp.float32))
    new_state = {"h": h, "context": state["context"], "count": state["count"] + 1}
    return (jax.nn.log_softmax(logits, axis=-1), new_state,
            {"attention": jax.nn.softmax(h @ f32(self.attend), axis=-1)})


class Markov:
  """A random first-order Markov chain over tokens, one transition table per image."""

  def __init__(self, seed: int, images: int, vocab: int = 5, scale: float = 1.0,
               eos_bias: float = 0.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(images, vocab, vocab)) * scale
    logits[:, :, EOS] += eos_bias
    self.vocab = vocab
    self.table = np_log_softmax(logits)

  def np_init(self, image: int):
    return image

  def np_step(self, state, token: int):
    return self.table[state, token], state, None

  def init_state(self, images) -> dict:
    images = np.asarray(images)
    return {"table": jnp.asarray(self.table[images], jnp.float32),
            "count": jnp.zeros((len(images),), jnp.int32)}

  def step_fn(self, state, tokens):
    log_probs = jax.vmap(lambda table, y: table[y])(state["table"], tokens)
    return log_probs, {"table": state["table"], "count": state["count"] + 1}, None


# ---------------------------------------------------------------------------------------------
# References.


class Hyp:
  def __init__(self, tokens, score, state, token_log_probs, aux):
    self.tokens, self.score, self.state = tokens, score, state
    self.token_log_probs, self.aux = token_log_probs, aux
    self.normalized = score

  def extend(self, token, log_probs, state, aux):
    return Hyp(self.tokens + (token,), self.score + log_probs[token], state,
               self.token_log_probs + [log_probs[token]], self.aux + [aux])


def ref_greedy(model, image: int, max_len: int) -> Hyp:
  hyp = Hyp((), 0.0, model.np_init(image), [], [])
  for _ in range(max_len):
    log_probs, state, aux = model.np_step(hyp.state, hyp.tokens[-1] if hyp.tokens else BOS)
    hyp = hyp.extend(int(np.argmax(log_probs)), log_probs, state, aux)
    if hyp.tokens[-1] == EOS:
      break
  return hyp


def ref_exhaustive(model, image: int, max_len: int, penalty: str, alpha: float) -> list[Hyp]:
  """Every sequence: ending with eos within max_len tokens, or max_len tokens without eos;
  best first."""
  done, frontier = [], [Hyp((), 0.0, model.np_init(image), [], [])]
  for _ in range(max_len):
    grown = []
    for hyp in frontier:
      log_probs, state, aux = model.np_step(hyp.state, hyp.tokens[-1] if hyp.tokens else BOS)
      for token in range(model.vocab):
        new = hyp.extend(token, log_probs, state, aux)
        (done if token == EOS else grown).append(new)
    frontier = grown
  done += frontier
  for hyp in done:
    hyp.normalized = hyp.score / np_length_penalty(penalty, len(hyp.tokens), alpha)
  return sorted(done, key=lambda h: -h.normalized)


def ref_beam(model, image: int, beam_size: int, max_len: int, penalty: str = "none",
             alpha: float = 0.6, groups: int = 1, strength: float = 0.0) -> list[list[Hyp]]:
  """(Diverse) beam search on Python lists, no early stop; per group, best first.

  Per step and group (in order): rank all extensions by score minus `strength` times how
  often their token was chosen by earlier groups at this step; the group chooses the best
  beam_size/groups (counted for later groups), of which those ending with eos are finished;
  the best beam_size/groups not ending with eos stay alive. After max_len steps, the alive
  ones are finished too. Each group keeps its beam_size/groups best finished.
  """
  width = beam_size // groups
  alive = [[Hyp((), 0.0, model.np_init(image), [], [])] for _ in range(groups)]
  finished = [[] for _ in range(groups)]
  for t in range(max_len):
    counts = np.zeros(model.vocab)
    for g in range(groups):
      cands = []
      for hyp in alive[g]:
        log_probs, state, aux = model.np_step(hyp.state, hyp.tokens[-1] if hyp.tokens else BOS)
        for token in range(model.vocab):
          new = hyp.extend(token, log_probs, state, aux)
          cands.append((new.score - strength * counts[token], new))
      cands.sort(key=lambda c: -c[0])
      for _, new in cands[:width]:
        counts[new.tokens[-1]] += 1
        if new.tokens[-1] == EOS:
          new.normalized = new.score / np_length_penalty(penalty, t + 1, alpha)
          finished[g].append(new)
      alive[g] = [new for _, new in cands if new.tokens[-1] != EOS][:width]
  for g in range(groups):
    for hyp in alive[g]:
      hyp.normalized = hyp.score / np_length_penalty(penalty, max_len, alpha)
    finished[g] = sorted(finished[g] + alive[g], key=lambda h: -h.normalized)[:width]
  return finished


def assert_hyp(out, index, hyp: Hyp, max_len: int):
  """`out`'s hypothesis at `index` (a tuple into the leading axes) equals `hyp`."""
  length = len(hyp.tokens)
  expected = np.full(max_len, PAD)
  expected[:length] = hyp.tokens
  np.testing.assert_array_equal(np.asarray(out.sequences[index]), expected)
  assert int(out.lengths[index]) == length
  np.testing.assert_allclose(float(out.scores[index]), hyp.score, rtol=1e-5, atol=1e-4)
  if out.normalized_scores is not None:
    np.testing.assert_allclose(float(out.normalized_scores[index]), hyp.normalized, rtol=1e-5,
                               atol=1e-4)
  token_lp = np.zeros(max_len)
  token_lp[:length] = hyp.token_log_probs
  np.testing.assert_allclose(np.asarray(out.token_log_probs[index]), token_lp, atol=1e-4)
  # The aux depends on the hidden state: it is right only if the ancestry was followed.
  attention = np.asarray(out.aux["attention"][index])
  np.testing.assert_allclose(attention[:length], np.stack([a["attention"] for a in hyp.aux]),
                             atol=1e-4)
  np.testing.assert_array_equal(attention[length:], 0)


_COMPILED = {}
# Tests check results, not speed: LLVM at -O0 halves the compile time that dominates them.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def decode(method: str, model, images, traced: dict | None = None, **static):
  """`decoding.<method>(model.step_fn, state, batch_size=len(images), **traced, **static)`
  under `jax.jit` (compiled once per model and static arguments), as numpy arrays (which
  are much faster to index one by one than jax arrays)."""
  key = (method, id(model), len(images), tuple(sorted(static.items())))
  args = (model.init_state(images), traced or {})
  if key not in _COMPILED:
    fn = functools.partial(getattr(decoding, method), batch_size=len(images), **static)
    search = jax.jit(lambda state, traced: fn(model.step_fn, state, **traced))
    _COMPILED[key] = search.lower(*args).compile(FAST_COMPILE)
  return jax.tree.map(np.asarray, _COMPILED[key](*args))


# Shared by most tests: 4 images that end at different steps.
MODEL = RNN(3, images=4, eos_ramp=0.6)
IMAGES = np.arange(4)
MAX_LEN = 6


# ---------------------------------------------------------------------------------------------
# Greedy.


def test_greedy_equals_python_argmax_loop():
  out = decode("greedy", MODEL, IMAGES, max_len=MAX_LEN)
  for b in IMAGES:
    assert_hyp(out, (b,), ref_greedy(MODEL, b, MAX_LEN), MAX_LEN)
  assert len(set(out.lengths.tolist())) > 1, "the images should end at different steps"
  assert out.num_steps == out.lengths.max()
  assert out.normalized_scores is None and out.sample_scores is None


def test_greedy_stops_when_every_image_ended():
  model = RNN(1, images=3, eos_bias=4.0)
  out = decode("greedy", model, [0, 1, 2], max_len=10)
  assert out.num_steps < 10
  assert out.num_steps == out.lengths.max()
  for b in range(3):
    assert_hyp(out, (b,), ref_greedy(model, b, 10), 10)


# ---------------------------------------------------------------------------------------------
# Beam search.


@pytest.mark.parametrize("penalty,alphas", [("none", [0.6]), ("average", [0.6]),
                                            ("gnmt", [0.6, 1.5])])
def test_beam_search_equals_exhaustive_search(penalty, alphas):
  # vocab 5, 4 steps: 1 + 4 + 16 + 64 sequences end with eos, 256 are truncated (341). With
  # 320 beams (>= the 5 * 64 extensions of the last step) nothing is ever pruned, so the
  # beams are the 320 best of all 341 sequences.
  model = RNN(2, images=2, eos_ramp=0.5)
  max_len, beams = 4, 320
  for alpha in alphas:  # traced: one compilation
    out = decode("beam_search", model, [0, 1], {"alpha": alpha}, beam_size=beams, max_len=max_len,
                 length_penalty=penalty)
    for b in range(2):
      every = ref_exhaustive(model, b, max_len, penalty, alpha)
      assert len(every) == 341
      for k in range(beams):
        assert_hyp(out, (b, k), every[k], max_len)


@pytest.mark.parametrize("penalty,alpha,beams", [("none", 0.6, 2), ("average", 0.6, 3),
                                                 ("gnmt", 2.0, 3)])
def test_beam_search_equals_reference_beam_search(penalty, alpha, beams):
  out = decode("beam_search", MODEL, IMAGES, beam_size=beams, max_len=MAX_LEN,
               length_penalty=penalty, alpha=alpha)
  assert out.sequences.shape == (4, beams, MAX_LEN)
  assert out.aux["attention"].shape == (4, beams, MAX_LEN, 3)
  for b in IMAGES:
    (ref,) = ref_beam(MODEL, b, beams, MAX_LEN, penalty, alpha)
    assert len(ref) == beams
    for k, hyp in enumerate(ref):
      assert_hyp(out, (b, k), hyp, MAX_LEN)


def test_beam_size_one_equals_greedy():
  beam = decode("beam_search", MODEL, IMAGES, beam_size=1, max_len=MAX_LEN)
  greedy = decode("greedy", MODEL, IMAGES, max_len=MAX_LEN)
  np.testing.assert_array_equal(beam.sequences[:, 0], greedy.sequences)
  np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
  np.testing.assert_allclose(beam.scores[:, 0], greedy.scores, atol=1e-5)
  np.testing.assert_allclose(beam.aux["attention"][:, 0], greedy.aux["attention"], atol=1e-6)


def test_beam_search_stops_early_with_the_full_search_result():
  model = RNN(5, images=3, eos_bias=3.0)
  max_len, beams = 12, 3
  out = decode("beam_search", model, [0, 1, 2], beam_size=beams, max_len=max_len)
  assert out.num_steps < max_len / 2
  for b in range(3):
    for k, hyp in enumerate(ref_beam(model, b, beams, max_len)[0]):
      assert_hyp(out, (b, k), hyp, max_len)


def test_beam_search_with_fewer_sequences_than_beams():
  # vocab 3, one step: only 3 sequences exist; the other beams are empty.
  model = RNN(6, images=2, vocab=3)
  out = decode("beam_search", model, [0, 1], beam_size=5, max_len=1)
  for b in range(2):
    every = ref_exhaustive(model, b, 1, "none", 0.6)
    for k, hyp in enumerate(every):
      assert_hyp(out, (b, k), hyp, 1)
    assert np.all(np.isneginf(out.normalized_scores[b, 3:]))
    np.testing.assert_array_equal(out.lengths[b, 3:], 0)
    np.testing.assert_array_equal(out.sequences[b, 3:], PAD)


def test_beam_search_on_a_batch_sharded_over_devices():
  # The DESIGN's data parallelism: images sharded over a 'data' mesh axis of 8 fake devices.
  mesh = jax.make_mesh((8,), ("data",))
  images = np.arange(8) % 4
  state = jax.device_put(MODEL.init_state(images),
                         jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  search = jax.jit(functools.partial(decoding.beam_search, MODEL.step_fn, batch_size=8,
                                     beam_size=3, max_len=MAX_LEN, length_penalty="average"))
  out = search(state)
  assert out.sequences.sharding.spec[0] == "data"
  out = jax.tree.map(np.asarray, out)
  for b, image in enumerate(images):
    (ref,) = ref_beam(MODEL, image, 3, MAX_LEN, "average")
    for k, hyp in enumerate(ref):
      assert_hyp(out, (b, k), hyp, MAX_LEN)


# ---------------------------------------------------------------------------------------------
# Diverse beam search.


def test_diverse_beam_search_with_one_group_is_beam_search():
  beam = decode("beam_search", MODEL, IMAGES, beam_size=3, max_len=MAX_LEN,
                length_penalty="average", alpha=0.6)
  diverse = decode("diverse_beam_search", MODEL, IMAGES, beam_size=3, groups=1,
                   diversity_strength=5.0, max_len=MAX_LEN, length_penalty="average")
  jax.tree.map(np.testing.assert_array_equal, beam, diverse)


def test_diverse_beam_search_without_diversity_repeats_a_smaller_beam_search():
  beam = decode("beam_search", MODEL, IMAGES, beam_size=2, max_len=MAX_LEN,
                length_penalty="none", alpha=0.6)
  diverse = decode("diverse_beam_search", MODEL, IMAGES, beam_size=6, groups=3,
                   diversity_strength=0.0, max_len=MAX_LEN)
  for start in (0, 2, 4):
    group = jax.tree.map(lambda x, s=start: x[:, s:s + 2] if x.ndim > 1 else x, diverse)
    jax.tree.map(np.testing.assert_array_equal, group, beam)


@pytest.mark.parametrize("groups,beams,strength,penalty", [(2, 4, 0.7, "none"),
                                                            (3, 6, 2.0, "gnmt"),
                                                            (3, 3, 0.3, "average")])
def test_diverse_beam_search_equals_reference(groups, beams, strength, penalty):
  out = decode("diverse_beam_search", MODEL, IMAGES, beam_size=beams, groups=groups,
               diversity_strength=strength, max_len=MAX_LEN, length_penalty=penalty)
  width = beams // groups
  for b in IMAGES:
    ref = ref_beam(MODEL, b, beams, MAX_LEN, penalty, groups=groups, strength=strength)
    for g in range(groups):
      assert len(ref[g]) == width
      for k, hyp in enumerate(ref[g]):
        assert_hyp(out, (b, g * width + k), hyp, MAX_LEN)


def test_diverse_beam_search_one_step_hamming_penalty_by_hand():
  # One step from bos, where eos is too unlikely to be chosen: group g's two beams are the
  # two best tokens of log p(v) - strength * (times v was chosen by groups 0..g-1).
  log_p = np.log(np.array([0.30, 0.25, 1e-6, 0.20, 0.15, 0.10 - 1e-6]))
  model = Markov(0, images=1, vocab=6)
  model.table = np.tile(log_p, (1, 6, 1))
  strength, groups, width = 0.5, 3, 2
  counts, expected = np.zeros(6), []
  for _ in range(groups):
    penalised = log_p - strength * counts
    chosen = np.argsort(-penalised, kind="stable")[:width]
    counts[chosen] += 1
    expected.append(sorted(chosen.tolist(), key=lambda v: -log_p[v]))
  # By hand: group 0 takes 0 (.30), 1 (.25); group 1 sees log .3 - .5 < log .2, so takes 3, 0;
  # group 2 sees 0 twice, 1 and 3 once: takes 1 (log .25 - .5) and 4 (log .15).
  assert expected == [[0, 1], [0, 3], [1, 4]]
  out = decode("diverse_beam_search", model, [0], beam_size=groups * width, groups=groups,
               diversity_strength=strength, max_len=1)
  np.testing.assert_array_equal(out.sequences[0, :, 0], np.concatenate(expected))
  np.testing.assert_allclose(out.scores[0], log_p[np.concatenate(expected)], rtol=1e-5)


def test_diverse_beam_search_groups_start_differently_when_strength_is_large():
  model = RNN(10, images=4, vocab=8, eos_bias=-5.0)
  plain = decode("beam_search", model, IMAGES, beam_size=4, max_len=5)
  diverse = decode("diverse_beam_search", model, IMAGES, beam_size=4, groups=4,
                   diversity_strength=100.0, max_len=5)
  for b in IMAGES:
    assert len(set(diverse.sequences[b, :, 0].tolist())) == 4, diverse.sequences[b, :, 0]
  # Plain beam search does not spread out like that on this model.
  assert any(len(set(row.tolist())) < 4 for row in plain.sequences[:, :, 0])


# ---------------------------------------------------------------------------------------------
# Sampling.


def test_sampling_at_zero_temperature_or_top_1_is_greedy():
  greedy = decode("greedy", MODEL, IMAGES, max_len=MAX_LEN)
  rng = jax.random.key(0)
  for kwargs in ({"temperature": 0.0}, {"top_k": 1}, {"temperature": 1e-4}):
    out = decode("sample", MODEL, IMAGES, {"rng": rng}, max_len=MAX_LEN, **kwargs)
    np.testing.assert_array_equal(out.sequences, greedy.sequences, err_msg=str(kwargs))
    np.testing.assert_allclose(out.scores, greedy.scores, atol=1e-5)
    np.testing.assert_allclose(out.aux["attention"], greedy.aux["attention"], atol=1e-6)
    np.testing.assert_allclose(out.sample_token_log_probs, 0, atol=1e-3)


def np_nucleus(probs: np.ndarray, p: float) -> set[int]:
  """The smallest set of most likely tokens whose probability is >= p."""
  order = np.argsort(-probs, kind="stable")
  total, kept = 0.0, set()
  for v in order:
    kept.add(int(v))
    total += probs[v]
    if total >= p:
      break
  return kept


def test_sampling_log_probs_top_p_is_the_nucleus():
  probs = np.array([0.05, 0.3, 0.12, 0.2, 0.08, 0.25])
  log_p = np.log(probs)
  sharp = probs ** 2 / np.sum(probs ** 2)
  dist_fn = jax.jit(decoding.sampling_log_probs, static_argnames="top_k")
  for top_p in (0.05, 0.29, 0.31, 0.5, 0.62, 0.9, 0.999):  # not on a cumulative sum
    dist = np.asarray(dist_fn(log_p[None], 1.0, 0, top_p))[0]
    nucleus = np_nucleus(probs, top_p)
    assert set(np.flatnonzero(np.isfinite(dist)).tolist()) == nucleus, top_p
    kept = sorted(nucleus)
    np.testing.assert_allclose(np.exp(dist[kept]), probs[kept] / probs[kept].sum(), rtol=1e-5)
    # Temperature applies first: the nucleus of the sharpened distribution.
    dist = np.asarray(dist_fn(log_p[None], 0.5, 0, top_p))[0]
    assert set(np.flatnonzero(np.isfinite(dist)).tolist()) == np_nucleus(sharp, top_p), top_p
  # top_k then top_p: the nucleus of the renormalised top 3 (.3, .25, .2 -> .4, .33, .27).
  dist = np.asarray(dist_fn(log_p[None], 1.0, 3, 0.7))[0]
  assert set(np.flatnonzero(np.isfinite(dist)).tolist()) == {1, 5}


def check_samples(model, images, out, max_len, allowed_and_dist):
  """Every sampled token is allowed and its log-probs (model's, sampling's) are right."""
  for row, image in enumerate(images):
    state, token = model.np_init(image), BOS
    for t in range(max_len):
      if t >= out.lengths[row]:
        assert out.sequences[row, t] == PAD
        assert out.token_log_probs[row, t] == 0 and out.sample_token_log_probs[row, t] == 0
        continue
      log_probs, state, _ = model.np_step(state, token)
      token = out.sequences[row, t]
      allowed, dist = allowed_and_dist(log_probs)
      assert token in allowed, (row, t, token, allowed)
      assert abs(out.token_log_probs[row, t] - log_probs[token]) < 1e-4
      assert abs(out.sample_token_log_probs[row, t] - dist[token]) < 1e-4
    assert out.lengths[row] == max_len or out.sequences[row, out.lengths[row] - 1] == EOS
  np.testing.assert_allclose(out.scores, out.token_log_probs.sum(1), rtol=1e-6)
  np.testing.assert_allclose(out.sample_scores, out.sample_token_log_probs.sum(1), rtol=1e-6)


def test_sampling_top_k_never_leaves_the_top_k():
  model = Markov(12, images=4, vocab=7, scale=1.0)
  images = np.tile(np.arange(4), 100)
  k, temperature = 3, 1.5
  out = decode("sample", model, images, {"rng": jax.random.key(1)}, max_len=5,
               temperature=temperature, top_k=k)

  def top_k(log_probs):
    allowed = set(np.argsort(-log_probs)[:k].tolist())
    logits = np.where(np.isin(np.arange(7), list(allowed)), log_probs / temperature, -np.inf)
    return allowed, np_log_softmax(logits)

  check_samples(model, images, out, 5, top_k)
  assert len(np.unique(out.sequences[:, 0])) >= k  # not vacuous


def test_sampling_top_p_never_leaves_the_nucleus():
  model = Markov(13, images=4, vocab=7, scale=1.5)
  images = np.tile(np.arange(4), 100)
  top_p = 0.7
  out = decode("sample", model, images, {"rng": jax.random.key(2)}, max_len=5, top_p=top_p)

  def nucleus(log_probs):
    allowed = np_nucleus(np.exp(log_probs), top_p)
    logits = np.where(np.isin(np.arange(7), list(allowed)), log_probs, -np.inf)
    return allowed, np_log_softmax(logits)

  check_samples(model, images, out, 5, nucleus)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampling_frequencies_match_the_distribution(temperature):
  # Frequencies of the first two tokens of 2 x 10000 samples vs their probabilities.
  model = Markov(14, images=2, vocab=5, scale=1.0)
  n = 10_000
  images = np.repeat([0, 1], n)
  out = decode("sample", model, images, {"rng": jax.random.key(3), "temperature": temperature},
               max_len=2)
  for image in (0, 1):
    dist = np_log_softmax(model.table[image] / temperature)
    expected = np.exp(dist[BOS][:, None] + dist)  # [first, second]
    expected[EOS] = 0
    expected[EOS, PAD] = np.exp(dist[BOS, EOS])
    rows = out.sequences[images == image]
    observed = np.zeros_like(expected)
    np.add.at(observed, (rows[:, 0], rows[:, 1]), 1)
    cells = expected > 0
    assert observed[~cells].sum() == 0
    chi2 = np.sum((observed[cells] - n * expected[cells]) ** 2 / (n * expected[cells]))
    assert stats.chi2.sf(chi2, cells.sum() - 1) > 1e-3, chi2
  first = jax.tree.map(lambda x: x[:200] if x.ndim else x, out)
  check_samples(model, images[:200], first, 2,
                lambda lp: (set(range(5)), np_log_softmax(lp / temperature)))


# ---------------------------------------------------------------------------------------------
# Errors.


def test_bad_arguments_are_named():
  state = dict(MODEL.init_state([0, 1]), scalar=jnp.zeros(()))
  with pytest.raises(ValueError, match="leading dim"):
    decoding.greedy(MODEL.step_fn, state, batch_size=2, max_len=3)
  with pytest.raises(ValueError, match="multiple of groups"):
    decoding.diverse_beam_search(MODEL.step_fn, MODEL.init_state([0, 1]), batch_size=2,
                                 beam_size=3, groups=2, diversity_strength=1.0, max_len=3)
  with pytest.raises(ValueError, match="length_penalty"):
    decoding.beam_search(MODEL.step_fn, MODEL.init_state([0, 1]), batch_size=2, beam_size=2,
                         max_len=3, length_penalty="wu")
