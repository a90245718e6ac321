"""Character-level recurrent language models.

min-char-rnn (Karpathy, 2015, the lecture gist) and char-rnn (Karpathy,
Johnson and Fei-Fei, "Visualizing and Understanding Recurrent Networks", 2015):
characters, one-hot or embedded, feed a stack of RNN/LSTM/GRU layers whose
top hidden state gives a softmax over the next character,

  h_t = f(x_t, h_{t-1});  p(x_{t+1} | x_{<=t}) = softmax(W_hy h_t + b_y).

The model is trained with truncated backpropagation through time: the carry
returned by one chunk is the initial carry of the next chunk of that stream.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmzoo.nn import recurrent


class CharRNN(nn.Module):
  """Embedding (or one-hot) -> `Recurrent` stack -> vocabulary logits.

  Attributes:
    vocab_size: characters in the vocabulary.
    cell: "rnn", "lstm" or "gru".
    hidden_size: units per layer.
    num_layers: stacked layers.
    embed_dim: embedding size; 0 feeds one-hot vectors (min-char-rnn).
    dropout_rate: dropout between layers and on the top layer's outputs.
    init_scheme: "torch" (PyTorch's defaults) or "normal" (N(0, init_std^2) weights,
      zero biases, as in min-char-rnn).
    init_std: standard deviation for init_scheme="normal".
    unroll: scan unroll factor.
  """

  vocab_size: int
  cell: recurrent.CellKind = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  embed_dim: int = 0
  dropout_rate: float = 0.0
  init_scheme: str = "torch"
  init_std: float = 0.01
  unroll: int = 1

  def _recurrent(self) -> recurrent.Recurrent:
    if self.init_scheme == "normal":
      kernel_init = nn.initializers.normal(self.init_std)
      bias_init = nn.initializers.zeros
    elif self.init_scheme == "torch":
      kernel_init = bias_init = None
    else:
      raise ValueError(f"unknown init_scheme {self.init_scheme!r}; expected 'torch' or 'normal'")
    return recurrent.Recurrent(
        cell=self.cell, hidden_size=self.hidden_size, num_layers=self.num_layers,
        dropout_rate=self.dropout_rate, kernel_init=kernel_init, bias_init=bias_init,
        unroll=self.unroll, name="rnn")

  def initialize_carry(self, batch_size: int) -> recurrent.Carry:
    return recurrent.Recurrent(cell=self.cell, hidden_size=self.hidden_size,
                               num_layers=self.num_layers, parent=None).initialize_carry(batch_size)

  @nn.compact
  def __call__(self, tokens: jax.Array, carry: recurrent.Carry | None = None,
               deterministic: bool = True):
    """Next-character logits.

    Args:
      tokens: `<int32>[batch, time]` character ids.
      carry: the carry from the previous chunk, or None for zeros.
      deterministic: disables dropout when True.

    Returns:
      `(logits <float32>[batch, time, vocab], carry)`.
    """
    # The ids go to the stack with the table they index (the identity for
    # one-hot inputs), which multiplies the table by the first layer's W_ih
    # once rather than every step's input (see `Recurrent`).
    if self.embed_dim:
      table = nn.Embed(self.vocab_size, self.embed_dim, name="embed").embedding
    else:
      table = jnp.eye(self.vocab_size, dtype=jnp.float32)
    h, carry = self._recurrent()(tokens, initial_carry=carry, deterministic=deterministic,
                                 embedding=table)
    if self.dropout_rate:
      h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    if self.init_scheme == "normal":
      dense = nn.Dense(self.vocab_size, kernel_init=nn.initializers.normal(self.init_std),
                       bias_init=nn.initializers.zeros, name="out")
    else:
      dense = nn.Dense(self.vocab_size, name="out")
    return dense(h), carry


def filter_logits(logits: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Divides by the temperature and keeps the `top_k` largest (0 keeps all)."""
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return logits


def generate(model: CharRNN, params, prime: jax.Array, length: int, rng: jax.Array,
             temperature: float = 1.0, top_k: int = 0) -> jax.Array:
  """Samples `length` characters after the priming ids.

  Args:
    model: the language model.
    params: its parameters.
    prime: `<int32>[batch, prime_len]` priming ids (prime_len >= 1).
    length: characters to sample.
    rng: the sampling key.
    temperature: softmax temperature (> 0).
    top_k: sample among the k most likely characters; 0 for all.

  Returns:
    `<int32>[batch, length]` sampled ids.
  """
  logits, carry = model.apply({"params": params}, prime)

  def step(state, key):
    carry, last_logits = state
    token = jax.random.categorical(key, filter_logits(last_logits, temperature, top_k))
    logits, carry = model.apply({"params": params}, token[:, None], carry)
    return (carry, logits[:, -1]), token

  _, tokens = jax.lax.scan(step, (carry, logits[:, -1]), jax.random.split(rng, length))
  return tokens.T
