"""Decoding: greedy, sampling, beam search and diverse beam search.

Every decoder in the zoo is described to this module by two things, and this
module knows nothing else of models, tasks, data or training:

* `init_state`: a pytree whose leaves all have leading dim `batch` (an LSTM
  carry, encoded image features for attention, ...), built by the caller;
* `step_fn(state, tokens) -> (log_probs, new_state, aux)`, a pure function:
  `tokens` is `<int32>[n]` (the previous token of each row, `bos_id` at the
  first step), `log_probs` is `<float32>[n, vocab]` and must be normalised
  (logsumexp over the vocabulary = 0), `new_state` has the structure, shapes and
  dtypes of `state`, and `aux` is a (possibly empty: None, {}) pytree of
  per-step outputs with leading dim `n`, e.g. attention weights
  `<float32>[n, num_regions]`. `n` is `batch` for greedy decoding and sampling
  and `batch * beam_size` for beam search, whose functions tile the state over
  beams themselves (row `b * beam_size + k` is beam k of image b) and reorder it
  by beam ancestry after every step.

Parts of the state that never change and are the same for all of an image's
hypotheses (image regions, attention keys) can be wrapped in `Shared`: beam
search then neither tiles nor reorders them (their leaves keep leading dim
`batch` while the rest has `batch * beam_size`), and `step_fn` broadcasts them
over the beams (`mmzoo.models.captioner.attend` does). Tiling and reordering
[batch, 196, 2048] regions over 5 beams at every step otherwise costs more than
the step itself.

All functions are batched over images, have fixed shapes and run one
`jax.lax.while_loop` (no host round-trip per step), which stops early when no
row can change any more. They are meant to be called under `jax.jit` with
`step_fn` closed over the parameters; the arguments that fix shapes or control
flow are static and must be Python values: `step_fn`, `batch_size`,
`beam_size`, `groups`, `max_len`, `top_k`, `length_penalty` and the special
ids, as well as `temperature` when it is 0 and `top_p` when it is 1 (any other
`temperature`, `top_p`, `alpha` and `diversity_strength` may be traced). For
example::

  decode = jax.jit(lambda params, state: beam_search(
      functools.partial(model_step, params), state, batch_size=32, beam_size=3, max_len=16))

Every function returns a `DecodeOutput`. A hypothesis holds the tokens after
bos: at most `max_len` of them, eos included when it ended with eos (one that
reaches `max_len` without eos is kept, truncated, with length `max_len`), then
`pad_id`. Per-token log-probs and `aux` are zero after a hypothesis's last
token, and `aux` at step t is what `step_fn` returned when it produced token t
of that hypothesis (following the beam ancestry, for beam search).

Beam search keeps, per image (and per group), `beam_size` alive hypotheses
ranked by total log-prob and a pool of `beam_size` finished ones ranked by the
length-normalised score, as in fairseq's sequence generator: each step takes
the 2 * beam_size best extensions, of which the ones ending with eos among the
best beam_size enter the finished pool and the best beam_size that do not end
stay alive (at most beam_size of the 2 * beam_size end, so beams never run
dry). With no length penalty and beam_size=1 this is greedy decoding. The loop
stops once, for every image, no alive hypothesis can still beat the worst
finished one: log-probs are <= 0, so a continuation of an alive hypothesis with
total log-prob s scores at most max(s / lp(t+1), s / lp(max_len)) for a length
penalty lp that is monotone in the length; the bound is exact, so the result is
the one of running all `max_len` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

# The ids of mmzoo/data/tokenizers.py, repeated here because decoding knows no data.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

State = Any  # pytree, every leaf with leading dim n
Aux = Any  # pytree of per-step outputs, every leaf with leading dim n (or None)
StepFn = Callable[[State, jax.Array], tuple[jax.Array, State, Aux]]
LengthPenalty = Literal["none", "average", "gnmt"]

_NEG_INF = float("-inf")


class Shared(NamedTuple):
  """A part of the decoding state that beam search leaves alone (module docstring):
  one copy per image, leaves `[batch, ...]`, never tiled over beams nor reordered."""

  value: Any


def _is_shared(x: Any) -> bool:
  return isinstance(x, Shared)


def _per_hypothesis(fn: Callable[[jax.Array], jax.Array], state: State) -> State:
  """`fn` applied to every leaf of `state` outside `Shared` parts."""
  return jax.tree.map(lambda x: x if _is_shared(x) else jax.tree.map(fn, x), state,
                      is_leaf=_is_shared)


class DecodeOutput(NamedTuple):
  """What every decoding function returns (a NamedTuple, hence a pytree).

  Shapes are given for greedy decoding and sampling; beam search adds a beam
  axis after the batch axis (`[batch, beam, ...]`).

  Attributes:
    sequences: <int32>[batch, max_len] tokens after bos, eos included, `pad_id` after.
    lengths: <int32>[batch] tokens in `sequences` (eos included; `max_len` when truncated).
    scores: <float32>[batch] total log-prob of the sequence under the model.
    token_log_probs: <float32>[batch, max_len] the model's log-prob of each token (0 after).
    aux: `step_fn`'s aux, stacked per step: each leaf `[batch, max_len, ...]`, 0 after.
    num_steps: <int32>[] times the while_loop called `step_fn` (<= max_len).
    normalized_scores: beam search only, <float32>[batch, beam]: `scores` divided by the
      length penalty, what hypotheses are ranked by (best first). Slots for which no
      hypothesis exists (fewer than beam_size possible sequences) hold -inf, length 0.
    sample_scores: sampling only, <float32>[batch]: total log-prob under the sampling
      distribution (after temperature, top-k and top-p).
    sample_token_log_probs: sampling only, <float32>[batch, max_len], per token.
  """

  sequences: jax.Array
  lengths: jax.Array
  scores: jax.Array
  token_log_probs: jax.Array
  aux: Any
  num_steps: jax.Array
  normalized_scores: jax.Array | None = None
  sample_scores: jax.Array | None = None
  sample_token_log_probs: jax.Array | None = None


def length_normalizer(kind: LengthPenalty, lengths: jax.Array | int,
                      alpha: float | jax.Array = 0.6) -> jax.Array:
  """The divisor of a hypothesis's total log-prob for ranking, `<float32>[...]` like `lengths`.

  `none`: 1; `average`: the length (mean log-prob per token); `gnmt`:
  ((5 + length) / 6) ** alpha (Wu et al. 2016, arXiv:1609.08144, eq. 14).
  Lengths count the generated tokens, eos included.
  """
  lengths = jnp.asarray(lengths, jnp.float32)
  if kind == "none":
    return jnp.ones_like(lengths)
  if kind == "average":
    return lengths
  if kind == "gnmt":
    return ((5.0 + lengths) / 6.0) ** alpha
  raise ValueError(f"length_penalty must be 'none', 'average' or 'gnmt', not {kind!r}")


def sampling_log_probs(log_probs: jax.Array, temperature: float | jax.Array = 1.0,
                       top_k: int = 0, top_p: float | jax.Array = 1.0) -> jax.Array:
  """Log-probs of the distribution `sample` draws from, `<float32>[..., vocab]`.

  The model's `log_probs` are divided by `temperature`, then only the `top_k`
  most likely tokens are kept (0: all), then only the nucleus (Holtzman et al.
  2019, arXiv:1904.09751): the smallest set of most likely tokens whose
  probability (after temperature and top-k) reaches `top_p`. Removed tokens get
  -inf; tokens tied with the last kept one are kept too. `temperature=0` gives
  the point mass on the argmax.
  """
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0, not {top_k}")
  log_probs = jnp.asarray(log_probs, jnp.float32)
  vocab = log_probs.shape[-1]
  if isinstance(temperature, int | float) and temperature == 0:
    best = jnp.argmax(log_probs, axis=-1)
    return jnp.where(jax.nn.one_hot(best, vocab, dtype=bool), 0.0, _NEG_INF)
  logits = log_probs / temperature
  if 0 < top_k < vocab:
    kth = _top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, _NEG_INF)
  if not (isinstance(top_p, int | float) and top_p >= 1):
    logits = jnp.where(_nucleus(jax.nn.softmax(logits, axis=-1), top_p), logits, _NEG_INF)
  return jax.nn.log_softmax(logits, axis=-1)


def _nucleus(probs: jax.Array, top_p: float | jax.Array) -> jax.Array:
  """<bool>[..., vocab]: the tokens with probability >= the largest threshold whose
  superlevel set still holds `top_p` of the mass (and at least the most likely token).

  Sorting the vocabulary is slow on XLA:CPU (~0.1 s per step at batch 50, vocab 10000),
  so the threshold is found by bisection on the bit patterns of the float32 probabilities,
  which order non-negative floats like their values: 31 masked sums, exact.
  """
  bits = jax.lax.bitcast_convert_type(probs.astype(jnp.float32), jnp.int32)

  def mass(threshold):
    return jnp.sum(jnp.where(bits >= threshold, probs, 0.0), axis=-1, keepdims=True)

  def halve(_, bounds):  # invariant: mass(lo) >= top_p > mass(hi)
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = mass(mid) >= top_p
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  lo = jnp.zeros(probs.shape[:-1] + (1,), jnp.int32)
  hi = jnp.full_like(lo, 0x7F800000)  # +inf
  lo, _ = jax.lax.fori_loop(0, 31, halve, (lo, hi))
  return bits >= jnp.minimum(lo, jnp.max(bits, axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------
# Shared checks.


def _check_state(init_state: State, batch_size: int) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(init_state):
    shape = jnp.shape(leaf)
    if not shape or shape[0] != batch_size:
      raise ValueError(f"init_state{jax.tree_util.keystr(path)} has shape {shape}; every leaf "
                       f"needs the leading dim batch_size={batch_size}")


def _trace_step(step_fn: StepFn, state: State, tokens: jax.Array) -> tuple[int, Aux]:
  """Checks `step_fn`'s outputs abstractly; returns the vocabulary size and aux's shapes."""
  n = tokens.shape[0]
  log_probs, new_state, aux = jax.eval_shape(step_fn, state, tokens)
  if len(log_probs.shape) != 2 or log_probs.shape[0] != n:
    raise ValueError(f"step_fn must return log_probs of shape [{n}, vocab], "
                     f"not {log_probs.shape}")
  old = [(tuple(jnp.shape(x)), jnp.result_type(x)) for x in jax.tree.leaves(state)]
  new = [(tuple(x.shape), x.dtype) for x in jax.tree.leaves(new_state)]
  if jax.tree.structure(state) != jax.tree.structure(new_state) or old != new:
    raise ValueError(f"step_fn must return a state shaped like its input: {old} != {new}")
  for path, leaf in jax.tree_util.tree_leaves_with_path(aux):
    if not leaf.shape or leaf.shape[0] != n:
      raise ValueError(f"aux{jax.tree_util.keystr(path)} has shape {leaf.shape}; every aux "
                       f"leaf needs the leading dim {n}")
  return log_probs.shape[1], aux


def _write(buffer: jax.Array, value: jax.Array, t: jax.Array, axis: int) -> jax.Array:
  """`buffer` with `value` (buffer's shape without `axis`) at index t of `axis`."""
  value = jnp.expand_dims(value.astype(buffer.dtype), axis)
  return jax.lax.dynamic_update_slice_in_dim(buffer, value, t, axis)


def _mask(live: jax.Array, x: jax.Array) -> jax.Array:
  """`x` where `live` (which broadcasts from the left), else 0."""
  return jnp.where(live.reshape(live.shape + (1,) * (x.ndim - live.ndim)), x, 0)


# ---------------------------------------------------------------------------------------------
# Greedy decoding and sampling: one token per image and step.


def _ancestral(step_fn: StepFn, init_state: State, batch_size: int, max_len: int,
               choose: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
               bos_id: int, eos_id: int, pad_id: int, with_sample: bool = False
               ) -> DecodeOutput:
  """Decodes one token per row and step with `choose(log_probs, t) -> (tokens, log-probs
  of them under the sampling distribution)`, until every row emitted eos or max_len."""
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, not {max_len}")
  _check_state(init_state, batch_size)
  b, n_t = batch_size, max_len
  tokens = jnp.full((b,), bos_id, jnp.int32)
  _, aux_shape = _trace_step(step_fn, init_state, tokens)
  carry = dict(
      t=jnp.zeros((), jnp.int32), state=init_state, tokens=tokens,
      done=jnp.zeros((b,), bool), lengths=jnp.full((b,), n_t, jnp.int32),
      sequences=jnp.full((b, n_t), pad_id, jnp.int32),
      token_log_probs=jnp.zeros((b, n_t), jnp.float32),
      sample_token_log_probs=jnp.zeros((b, n_t), jnp.float32),
      aux=jax.tree.map(lambda s: jnp.zeros((b, n_t) + s.shape[1:], s.dtype), aux_shape))

  def cond(c):
    return (c["t"] < n_t) & ~jnp.all(c["done"])

  def body(c):
    t, live = c["t"], ~c["done"]
    log_probs, state, aux = step_fn(c["state"], c["tokens"])
    log_probs = log_probs.astype(jnp.float32)
    tokens, sample_lp = choose(log_probs, t)
    tokens = jnp.where(live, tokens.astype(jnp.int32), pad_id)
    model_lp = jnp.take_along_axis(log_probs, tokens[:, None], axis=1)[:, 0]
    ended = live & (tokens == eos_id)
    return dict(
        t=t + 1, state=state, tokens=tokens, done=c["done"] | ended,
        lengths=jnp.where(ended, t + 1, c["lengths"]),
        sequences=_write(c["sequences"], tokens, t, 1),
        token_log_probs=_write(c["token_log_probs"], _mask(live, model_lp), t, 1),
        sample_token_log_probs=_write(c["sample_token_log_probs"], _mask(live, sample_lp), t, 1),
        aux=jax.tree.map(lambda buf, a: _write(buf, _mask(live, a), t, 1), c["aux"], aux))

  c = jax.lax.while_loop(cond, body, carry)
  sample_lp = c["sample_token_log_probs"] if with_sample else None
  return DecodeOutput(
      sequences=c["sequences"], lengths=c["lengths"],
      scores=jnp.sum(c["token_log_probs"], axis=1), token_log_probs=c["token_log_probs"],
      aux=c["aux"], num_steps=c["t"],
      sample_scores=None if sample_lp is None else jnp.sum(sample_lp, axis=1),
      sample_token_log_probs=sample_lp)


def greedy(step_fn: StepFn, init_state: State, batch_size: int, max_len: int, *,
           bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> DecodeOutput:
  """Greedy decoding: the most likely token at every step, until eos or `max_len` tokens.

  Returns `sequences` <int32>[batch, max_len], `lengths` <int32>[batch], `scores`
  <float32>[batch], `token_log_probs` <float32>[batch, max_len], `aux` leaves
  `[batch, max_len, ...]` and `num_steps`; see `DecodeOutput`.
  """
  def choose(log_probs, t):
    del t
    return jnp.argmax(log_probs, axis=-1), jnp.zeros(log_probs.shape[:1], jnp.float32)

  return _ancestral(step_fn, init_state, batch_size, max_len, choose, bos_id, eos_id, pad_id)


def sample(step_fn: StepFn, init_state: State, rng: jax.Array, batch_size: int, max_len: int,
           temperature: float | jax.Array = 1.0, top_k: int = 0,
           top_p: float | jax.Array = 1.0, *, bos_id: int = BOS_ID, eos_id: int = EOS_ID,
           pad_id: int = PAD_ID) -> DecodeOutput:
  """Ancestral sampling from `sampling_log_probs(log_probs, temperature, top_k, top_p)`.

  Step t draws with `jax.random.fold_in(rng, t)`, independently for every image.
  Besides `DecodeOutput`'s fields for the model (`scores`, `token_log_probs`
  <float32>[batch, max_len]: the untempered model's log-probs of the drawn tokens,
  what self-critical training needs), returns `sample_scores` <float32>[batch] and
  `sample_token_log_probs` <float32>[batch, max_len] under the sampling distribution.
  """
  def choose(log_probs, t):
    dist = sampling_log_probs(log_probs, temperature, top_k, top_p)
    tokens = jax.random.categorical(jax.random.fold_in(rng, t), dist, axis=-1)
    return tokens, jnp.take_along_axis(dist, tokens[:, None], axis=1)[:, 0]

  return _ancestral(step_fn, init_state, batch_size, max_len, choose, bos_id, eos_id, pad_id,
                    with_sample=True)


# ---------------------------------------------------------------------------------------------
# Beam search.


class _Beams(NamedTuple):
  """Hypotheses per image: every field `[batch, beams, ...]`."""

  sequences: jax.Array  # <int32>[batch, beams, max_len]
  scores: jax.Array  # <float32>[batch, beams] total log-prob
  normalized: jax.Array  # <float32>[batch, beams] ranking score (finished pool only)
  lengths: jax.Array  # <int32>[batch, beams]
  token_log_probs: jax.Array  # <float32>[batch, beams, max_len]
  aux: Any  # leaves [batch, beams, max_len, ...]


def _gather(tree: Any, index: jax.Array) -> Any:
  """Every leaf `[batch, n, ...]` indexed along axis 1 by `index` <int32>[batch, m]."""
  def take(x):
    i = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, i, axis=1, mode="promise_in_bounds")

  return jax.tree.map(take, tree)


def _reorder_state(state: State, parent: jax.Array) -> State:
  """Leaves `[batch * beams, ...]` reordered to `parent` <int32>[batch, beams]."""
  b, k = parent.shape

  def reorder(x):
    x = _gather(x.reshape((b, k) + x.shape[1:]), parent)
    return x.reshape((b * k,) + x.shape[2:])

  return _per_hypothesis(reorder, state)


def _top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k` over the last axis, kept a top-k on XLA:CPU.

  XLA:CPU lowers top-k to a full sort and turns it back into its fast TopK kernel only
  when the sort's outputs feed plain slices; inside the loop the slices were fused into
  the gathers that use them, leaving a sort of [batch, beam * vocab] every step (~0.4 s
  at batch 50, beam 3, vocab 10000). An optimization barrier keeps the slices in place.
  It also holds a third value: a barrier over exactly (values, indices) becomes a barrier
  over the TopK instruction itself, on which XLA's TopkDecomposer aborts the process.
  """
  values, indices = jax.lax.top_k(x, k)
  values, indices, _ = jax.lax.optimization_barrier((values, indices, jnp.zeros((), x.dtype)))
  return values, indices


def _merge(pool: _Beams, new: _Beams, groups: int) -> _Beams:
  """The best of `pool` and `new` by normalised score, per group: `[batch, beams]` each,
  beams of group g at `[g * beams / groups, (g + 1) * beams / groups)`; best first. On
  ties the pool wins, so a hypothesis that only equals the worst finished one never enters."""
  b, k = pool.scores.shape
  kg = k // groups

  def by_group(x):
    return x.reshape((b * groups, kg) + x.shape[2:])

  both = jax.tree.map(lambda x, y: jnp.concatenate([by_group(x), by_group(y)], axis=1),
                      pool, new)
  _, best = _top_k(both.normalized, kg)
  return jax.tree.map(lambda x: x.reshape((b, k) + x.shape[2:]), _gather(both, best))


def _beam_search(step_fn: StepFn, init_state: State, batch_size: int, beam_size: int,
                 groups: int, diversity_strength: float | jax.Array, max_len: int,
                 length_penalty: LengthPenalty, alpha: float | jax.Array, bos_id: int,
                 eos_id: int, pad_id: int) -> DecodeOutput:
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, not {max_len}")
  if beam_size < 1 or groups < 1 or beam_size % groups:
    raise ValueError(f"beam_size ({beam_size}) must be a positive multiple of groups ({groups})")
  length_normalizer(length_penalty, 1, alpha)  # validates the name
  _check_state(init_state, batch_size)
  b, k, n_t = batch_size, beam_size, max_len
  kg = k // groups
  state = _per_hypothesis(lambda x: jnp.repeat(jnp.asarray(x), k, axis=0), init_state)
  tokens = jnp.full((b, k), bos_id, jnp.int32)
  vocab, aux_shape = _trace_step(step_fn, state, tokens.reshape(b * k))
  if vocab < 2:
    raise ValueError("beam search needs a vocabulary of at least 2 tokens")

  def normalize(scores, lengths):
    return scores / length_normalizer(length_penalty, lengths, alpha)

  empty = _Beams(
      sequences=jnp.full((b, k, n_t), pad_id, jnp.int32),
      scores=jnp.full((b, k), _NEG_INF, jnp.float32),
      normalized=jnp.full((b, k), _NEG_INF, jnp.float32),
      lengths=jnp.zeros((b, k), jnp.int32),
      token_log_probs=jnp.zeros((b, k, n_t), jnp.float32),
      aux=jax.tree.map(lambda s: jnp.zeros((b, k, n_t) + s.shape[1:], s.dtype), aux_shape))
  # Each group starts from one hypothesis (the empty one); its other beams are dead (-inf).
  first = (jnp.arange(k) % kg == 0)[None, :]
  alive = empty._replace(scores=jnp.where(first, 0.0, _NEG_INF) + jnp.zeros((b, k)))
  carry = dict(t=jnp.zeros((), jnp.int32), state=state, tokens=tokens, alive=alive,
               finished=empty)

  def cond(c):
    t = c["t"]
    best = jnp.max(c["alive"].scores.reshape(b, groups, kg), axis=-1)
    bound = jnp.maximum(normalize(best, t + 1), normalize(best, n_t))
    worst = jnp.min(c["finished"].normalized.reshape(b, groups, kg), axis=-1)
    return (t < n_t) & jnp.any(bound > worst)

  def body(c):
    t, alive = c["t"], c["alive"]
    log_probs, state, aux = step_fn(c["state"], c["tokens"].reshape(b * k))
    log_probs = log_probs.astype(jnp.float32).reshape(b, k, vocab)
    aux = jax.tree.map(lambda x: x.reshape((b, k) + x.shape[1:]), aux)
    candidates = (alive.scores[:, :, None] + log_probs).reshape(b, k * vocab)

    # Groups choose in order; a group's choices penalise the next groups' (Hamming diversity).
    counts = jnp.zeros((b, vocab), jnp.float32)
    ended_index, ended_scores, alive_index, alive_scores = [], [], [], []
    for g in range(groups):
      offset = g * kg * vocab
      own = candidates[:, offset:offset + kg * vocab]
      # [b, 2kg]: flat indices into the group's kg * vocab extensions, and their total log-probs.
      if g == 0:
        scores, top = _top_k(own, 2 * kg)
      else:
        penalised = own - diversity_strength * jnp.tile(counts, (1, kg))
        _, top = _top_k(penalised, 2 * kg)
        scores = jnp.take_along_axis(own, top, axis=1)
      is_eos = top % vocab == eos_id
      if groups > 1:
        chosen = jax.nn.one_hot(top[:, :kg] % vocab, vocab) * jnp.isfinite(scores[:, :kg, None])
        counts = counts + jnp.sum(chosen, axis=1)
      ended_index.append(top[:, :kg] + offset)
      ended_scores.append(jnp.where(is_eos[:, :kg], scores[:, :kg], _NEG_INF))
      # The first kg that do not end, in rank order.
      rank = jnp.arange(2 * kg) + 2 * kg * is_eos
      _, keep = jax.lax.top_k(-rank, kg)
      alive_index.append(jnp.take_along_axis(top, keep, axis=1) + offset)
      alive_scores.append(jnp.take_along_axis(scores, keep, axis=1))

    flat_log_probs = log_probs.reshape(b, k * vocab)

    def extend(index, scores):
      parent, token = index // vocab, index % vocab
      beams = _gather(alive, parent)
      step_aux = _gather(aux, parent)
      return parent, beams._replace(
          sequences=_write(beams.sequences, token, t, 2),
          scores=scores,
          token_log_probs=_write(beams.token_log_probs,
                                 jnp.take_along_axis(flat_log_probs, index, axis=1), t, 2),
          aux=jax.tree.map(lambda buf, a: _write(buf, a, t, 2), beams.aux, step_aux))

    _, ended = extend(jnp.concatenate(ended_index, axis=1), jnp.concatenate(ended_scores, axis=1))
    ended = ended._replace(normalized=normalize(ended.scores, t + 1),
                           lengths=jnp.full((b, k), t + 1, jnp.int32))
    index = jnp.concatenate(alive_index, axis=1)
    parent, alive = extend(index, jnp.concatenate(alive_scores, axis=1))
    return dict(t=t + 1, state=_reorder_state(state, parent), tokens=index % vocab,
                alive=alive, finished=_merge(c["finished"], ended, groups))

  c = jax.lax.while_loop(cond, body, carry)
  # Hypotheses still alive after max_len steps are complete (truncated) ones.
  truncated = jnp.where(c["t"] == n_t, c["alive"].scores, _NEG_INF)
  finished = _merge(c["finished"], c["alive"]._replace(
      scores=truncated, normalized=normalize(truncated, n_t),
      lengths=jnp.full((b, k), n_t, jnp.int32)), groups)
  # Slots no hypothesis reached (fewer than beam_size exist) carry nothing.
  valid = finished.normalized > _NEG_INF
  return DecodeOutput(
      sequences=jnp.where(valid[..., None], finished.sequences, pad_id),
      lengths=jnp.where(valid, finished.lengths, 0),
      scores=finished.scores,
      token_log_probs=_mask(valid, finished.token_log_probs),
      aux=jax.tree.map(lambda x: _mask(valid, x), finished.aux),
      num_steps=c["t"],
      normalized_scores=finished.normalized)


def beam_search(step_fn: StepFn, init_state: State, batch_size: int, beam_size: int,
                max_len: int, length_penalty: LengthPenalty = "none",
                alpha: float | jax.Array = 0.6, *, bos_id: int = BOS_ID,
                eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> DecodeOutput:
  """Beam search with finished/alive bookkeeping and an exact early stop (module docstring).

  Args:
    step_fn: called on `batch_size * beam_size` rows, row `b * beam_size + k` being beam k
      of image b.
    init_state: leaves `[batch_size, ...]`; tiled over beams here, except `Shared` parts.
    length_penalty: how finished hypotheses are ranked: total log-prob divided by 1
      (`none`), by the length (`average`) or by ((5 + length) / 6) ** alpha (`gnmt`).
    alpha: the exponent of `gnmt`.

  Returns:
    A `DecodeOutput` with the beam_size best finished hypotheses per image, best first:
    `sequences` <int32>[batch, beam, max_len], `lengths` <int32>[batch, beam], `scores` and
    `normalized_scores` <float32>[batch, beam], `token_log_probs`
    <float32>[batch, beam, max_len], `aux` leaves `[batch, beam, max_len, ...]` along each
    hypothesis's own ancestry, and `num_steps`.
  """
  return _beam_search(step_fn, init_state, batch_size, beam_size, 1, 0.0, max_len,
                      length_penalty, alpha, bos_id, eos_id, pad_id)


def diverse_beam_search(step_fn: StepFn, init_state: State, batch_size: int, beam_size: int,
                        groups: int, diversity_strength: float | jax.Array, max_len: int,
                        length_penalty: LengthPenalty = "none",
                        alpha: float | jax.Array = 0.6, *, bos_id: int = BOS_ID,
                        eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> DecodeOutput:
  """Diverse beam search with Hamming diversity (Vijayakumar et al. 2016, arXiv:1610.02424).

  The beams are split into `groups` groups of `beam_size // groups`, each a beam search
  of its own (alive beams, finished pool, early stop). At every step the groups choose
  in order: group g ranks its extensions by total log-prob minus `diversity_strength`
  times the number of times their last token is among the tokens chosen at this step by
  groups 0..g-1 (a group chooses its beam_size // groups best extensions, eos included).
  As in the paper's objective the penalty only steers the choice: the hypotheses keep
  their model log-probs, by which (length-normalised) the finished pools are ranked.

  With `groups=1` this is `beam_search`. With `diversity_strength=0` each group is the
  same beam search of `beam_size // groups` beams.

  Returns:
    A `DecodeOutput` shaped as `beam_search`'s, with the beams grouped: beams
    `[g * beam_size // groups, (g + 1) * beam_size // groups)` are group g's, best first.
  """
  return _beam_search(step_fn, init_state, batch_size, beam_size, groups, diversity_strength,
                      max_len, length_penalty, alpha, bos_id, eos_id, pad_id)
