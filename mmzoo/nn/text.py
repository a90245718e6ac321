"""Sentence encoders: a recurrent encoder (last state or mean over time) and bag of words.

Used by the joint-embedding models (VSE, VSE++, order embeddings) and by any
model that needs one vector per sentence.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmzoo.nn import recurrent


class SentenceEncoder(nn.Module):
  """`<int32>[batch, time]` tokens with lengths -> `<float32>[batch, features]`.

  Attributes:
    vocab_size: token ids are in [0, vocab_size); id 0 is padding.
    embed_dim: word embedding size.
    kind: "gru" or "lstm" (a `recurrent.Recurrent` stack), or "bow" (mean of
      the word embeddings).
    hidden_size: units per recurrent layer and direction.
    num_layers / bidirectional: of the recurrent stack.
    pooling: "last", the top layer's state after each sentence's last token
      (both directions concatenated when bidirectional), as VSE/VSE++ use; or
      "mean", the top layer's outputs averaged over each sentence's tokens.
  """

  vocab_size: int
  embed_dim: int = 300
  kind: Literal["gru", "lstm", "bow"] = "gru"
  hidden_size: int = 1024
  num_layers: int = 1
  bidirectional: bool = False
  pooling: Literal["last", "mean"] = "last"

  @property
  def features(self) -> int:
    if self.kind == "bow":
      return self.embed_dim
    return self.hidden_size * (2 if self.bidirectional else 1)

  @nn.compact
  def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    embedded = nn.Embed(self.vocab_size, self.embed_dim,
                        embedding_init=nn.initializers.uniform(0.2), name="embed")(tokens)
    steps = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]       # [B, T]
    count = jnp.maximum(lengths, 1).astype(jnp.float32)[:, None]
    if self.kind == "bow":
      return jnp.sum(embedded * steps[..., None], axis=1) / count
    if self.kind not in ("gru", "lstm"):
      raise ValueError(f"unknown sentence encoder {self.kind!r}; use gru, lstm or bow")
    outputs, carry = recurrent.Recurrent(
        self.kind, self.hidden_size, self.num_layers, self.bidirectional, name="rnn")(
            embedded, lengths)
    if self.pooling == "mean":
      return jnp.sum(outputs, axis=1) / count  # outputs are zero past each length
    if self.pooling != "last":
      raise ValueError(f"unknown pooling {self.pooling!r}; use last or mean")
    directions = 2 if self.bidirectional else 1
    top = carry[-directions:]
    hidden = [entry[0] if self.kind == "lstm" else entry for entry in top]
    return jnp.concatenate(hidden, axis=-1)
