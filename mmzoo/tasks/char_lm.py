"""Character-level language modelling (min-char-rnn, char-rnn) with TBPTT.

The corpus is read as `data.batch_size` contiguous streams; each step trains on
the next `data.seq_len` characters of every stream, starting from the carry the
previous chunk left (gradients stop at chunk boundaries). Validation walks the
held-out tail of the corpus the same way, from a zero state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmzoo.data import text
from mmzoo.errors import InputError
from mmzoo.eval import registry
from mmzoo.models import char_rnn
from mmzoo.train import parallel


def cpu_split_batch_sizes(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
  """The batch sizes `--cpu_devices=auto` splits a CPU host by, or None for one device.

  Where the recurrent layers run through the fused CPU kernels, one device on all
  cores trains faster: the kernels share each step between the cores, each of
  which keeps its part of the weights in its L2, where a device per core streams
  all the weights from L3 every step (benchmarks/RESULTS.md, char_lm, session
  19). The XLA loop's small per-step ops run faster on a device per core.
  """
  from mmzoo.nn import cpu_kernels  # Does not start JAX's backends.

  if cpu_kernels.expected(config.model.cell, config.model.hidden_size):
    return None
  return config.data.batch_size, config.eval.batch_size


class CharLMTask:
  """Binds the char model, its TBPTT data and the "lm" evaluator.

  Args:
    config: a `mmzoo/configs/char_rnn.py`-style config.
    artifacts: a restored checkpoint's artifacts (its vocabulary); None builds
      the vocabulary from the corpus.
    load_data: False skips reading the corpus (sampling needs only the vocab).
  """

  def __init__(self, config: ml_collections.ConfigDict, artifacts: dict | None = None,
               load_data: bool = True):
    self.config = config
    data = config.data
    corpus = None
    if load_data or artifacts is None:
      corpus = text.read_corpus(data.path) if data.path else text.builtin_corpus(data.max_chars)
      self.corpus_name = data.path or "built-in corpus"
    self.vocab = (text.CharVocab.from_json(artifacts["vocab"]) if artifacts
                  else text.CharVocab.from_text(corpus))
    if corpus is not None:
      unknown = self.vocab.unknown(corpus)
      if unknown:
        raise InputError(f"{self.corpus_name}: characters {unknown[:10]!r} are not in the "
                         "checkpoint's vocabulary; was it trained on another corpus?")
      self.train_ids, self.validation_ids = text.split_by_position(
          self.vocab.encode(corpus), data.validation_fraction)
    m = config.model
    self.model = char_rnn.CharRNN(
        vocab_size=self.vocab.size, cell=m.cell, hidden_size=m.hidden_size,
        num_layers=m.num_layers, embed_dim=m.embed_dim, dropout_rate=m.dropout_rate,
        init_scheme=m.init_scheme, init_std=m.init_std, unroll=m.unroll)
    self.tokens_per_batch = data.batch_size * data.seq_len
    self._eval_nll = jax.jit(self._nll)

  # --- What the trainer needs. ---

  def init_params(self, rng: jax.Array):
    tokens = jnp.zeros((1, self.config.data.seq_len), jnp.int32)
    return self.model.init({"params": rng}, tokens)["params"]

  def init_task_state(self):
    """The TBPTT carry of every training stream."""
    return self.model.initialize_carry(self.config.data.batch_size)

  def _nll(self, params, carry, batch, rng=None):
    """Summed NLL `<float32>[]`, and the carry after the chunk."""
    reset = batch["reset"][:, None]
    carry = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), carry)
    if rng is None:
      logits, carry = self.model.apply({"params": params}, batch["inputs"], carry)
    else:
      logits, carry = self.model.apply({"params": params}, batch["inputs"], carry,
                                       deterministic=False, rngs={"dropout": rng})
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return nll.sum(), jax.lax.stop_gradient(carry)

  def loss_fn(self, params, carry, batch, rng):
    nll_sum, carry = self._nll(params, carry, batch, rng)
    count = jnp.asarray(batch["targets"].size, jnp.float32)
    if self.config.train.loss_normalization == "sequence":
      loss = nll_sum / batch["targets"].shape[0]  # Summed over each chunk (min-char-rnn).
    else:
      loss = nll_sum / count
    return loss, ({"loss": (nll_sum, count)}, carry)

  def train_batches(self) -> text.StreamBatches:
    parallel.check_batch_size(self.config.data.batch_size, "data.batch_size")
    return text.StreamBatches(
        self.train_ids, self.config.data.batch_size, self.config.data.seq_len,
        process_index=jax.process_index(), process_count=jax.process_count(),
        name=f"{self.corpus_name} (training split)")

  def evaluate(self, params, mesh, split: str = "validation") -> dict[str, float]:
    return registry.run(self.config.eval.evaluators, self, params, mesh, split)

  def artifacts(self) -> dict:
    return {"vocab": self.vocab.to_json()}

  def on_train_end(self, params) -> None:
    if jax.process_index() == 0:
      s = self.config.sample
      sample = self.sample(params, s.prime, s.length, s.temperature, s.top_k, self.config.seed)
      print(f"--- sample (temperature {s.temperature}) ---\n{sample}\n---", flush=True)

  # --- What the evaluators and tools need. ---

  def lm_scores(self, params, mesh, split: str = "validation") -> tuple[float, float]:
    """Summed NLL and character count over a split ("validation" or "train")."""
    if split not in ("validation", "train"):
      raise InputError(f"the char_lm task has splits 'train' and 'validation', not {split!r}")
    ids = self.validation_ids if split == "validation" else self.train_ids
    if self.config.eval.max_chars:
      ids = ids[:self.config.eval.max_chars]
    batch_size, seq_len = self.config.eval.batch_size, self.config.data.seq_len
    parallel.check_batch_size(batch_size, "eval.batch_size")
    batches = text.StreamBatches(
        ids, batch_size, seq_len, process_index=jax.process_index(),
        process_count=jax.process_count(), name=f"{self.corpus_name} ({split} split)")
    by_batch = parallel.batch_sharding(mesh)
    carry = jax.jit(functools.partial(self.model.initialize_carry, batch_size),
                    out_shardings=by_batch)()
    total = jnp.zeros((), jnp.float32)
    in_flight = parallel.InFlight()
    for batch in batches.epoch():
      nll_sum, carry = self._eval_nll(params, carry, parallel.global_batch(batch, mesh))
      in_flight.admit(nll_sum)
      total = total + nll_sum
    return float(jax.device_get(total)), float(batches.num_chunks * batch_size * seq_len)

  def sample(self, params, prime: str, length: int, temperature: float = 1.0, top_k: int = 0,
             seed: int = 0) -> str:
    """`prime` followed by `length` sampled characters."""
    if temperature <= 0:
      raise InputError(f"temperature must be positive, got {temperature}")
    if top_k < 0 or top_k > self.vocab.size:
      raise InputError(f"top_k must be in [0, {self.vocab.size}], got {top_k}")
    unknown = self.vocab.unknown(prime)
    if unknown:
      raise InputError(f"priming text has characters not in the vocabulary: {unknown!r}")
    rng, first = jax.random.split(jax.random.PRNGKey(seed))
    ids = (self.vocab.encode(prime) if prime
           else np.asarray(jax.random.randint(first, (1,), 0, self.vocab.size)))
    params = jax.device_get(params)
    out = _generate(self.model, length, float(temperature), int(top_k))(
        params, jnp.asarray(ids)[None], rng)
    return self.vocab.decode(ids) + self.vocab.decode(np.asarray(out)[0])


@functools.cache
def _generate(model: char_rnn.CharRNN, length: int, temperature: float, top_k: int):
  return jax.jit(lambda params, prime, rng: char_rnn.generate(
      model, params, prime, length, rng, temperature, top_k))
