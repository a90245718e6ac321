"""What every captioner shares: an image encoder, a word embedding, and a decoder step.

A captioner is params + pure functions with one contract, so that training and
every decoding method (`mmzoo.decoding`) treat all of them alike:

  features = model.apply(v, images, method="encode")             VisualFeatures
  state    = model.apply(v, features, method="init_state")       pytree, batch-leading
  logits, state, aux = model.apply(v, state, tokens, method="step")
      tokens <int32>[batch] (the previous word), logits <float32>[batch, vocab],
      aux: per-step outputs, e.g. {"attention": <float32>[batch, regions]}

`__call__(images, tokens)` runs the step over a whole caption with teacher
forcing (one `nn.scan`, no Python time loop) and returns `(logits [B, T, V],
aux stacked over time)`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmzoo.nn import vision


class Captioner(nn.Module):
  """Base class; subclasses define `setup_decoder`, `init_state` and `step`.

  Attributes:
    vocab_size: tokenizer vocabulary (id 0 is padding, 1 bos, 2 eos).
    embed_dim: word embedding size.
    hidden_size: recurrent units.
    dropout_rate: dropout on the decoder's inputs and outputs during training.
    encoder: `vision.build_encoder` name ("small_cnn", "resnet50", "precomputed").
    encoder_kwargs: that encoder's options, as (name, value) pairs.
    frozen_encoder: keep the image encoder fixed.
  """

  vocab_size: int
  embed_dim: int = 256
  hidden_size: int = 512
  dropout_rate: float = 0.5
  encoder: str = "small_cnn"
  encoder_kwargs: tuple = ()
  frozen_encoder: bool = False

  def setup(self):
    self.image_encoder = vision.build_encoder(self.encoder, frozen=self.frozen_encoder,
                                              **dict(self.encoder_kwargs))
    self.embed = nn.Embed(self.vocab_size, self.embed_dim,
                          embedding_init=nn.initializers.uniform(0.1))
    self.dropout = nn.Dropout(self.dropout_rate)
    self.setup_decoder()

  def setup_decoder(self) -> None:
    raise NotImplementedError

  def encode(self, images: jax.Array, mask: jax.Array | None = None,
             train: bool = False) -> vision.VisualFeatures:
    """Normalised images (or precomputed features, with an optional region mask)."""
    features = self.image_encoder(images, mask, train=train)
    return vision.VisualFeatures(features.pooled.astype(jnp.float32),
                                 features.regions.astype(jnp.float32), features.mask)

  def init_state(self, features: vision.VisualFeatures) -> Any:
    raise NotImplementedError

  def step(self, state: Any, tokens: jax.Array,
           deterministic: bool = True) -> tuple[jax.Array, Any, dict]:
    raise NotImplementedError

  def teacher_forced(self, features: vision.VisualFeatures, tokens: jax.Array,
                     deterministic: bool = True) -> tuple[jax.Array, dict]:
    """`<int32>[B, T]` input words -> `(logits [B, T, V], aux with a time axis 1)`."""
    state = self.init_state(features)

    def body(module, state, words):
      logits, state, aux = module.step(state, words, deterministic)
      return state, (logits, aux)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False,
                                                                  "dropout": True},
                   in_axes=1, out_axes=1)
    _, (logits, aux) = scan(self, state, tokens)
    return logits, aux

  def __call__(self, images: jax.Array, tokens: jax.Array, mask: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, dict]:
    return self.teacher_forced(self.encode(images, mask, train), tokens, not train)


def attend(keys: jax.Array, query: jax.Array, values: jax.Array, mask: jax.Array,
           score: nn.Module) -> tuple[jax.Array, jax.Array]:
  """Additive (Bahdanau) attention: `alpha = softmax(w^T tanh(keys + query))`.

  keys `[B, R, A]` (the R regions already projected), query `[N, A]` (the state
  projected), values `[B, R, D]`, mask `<bool>[B, R]`; `score` maps A -> 1. N is B,
  or a multiple of B when each image has N / B hypotheses (rows `b * N/B ...` of the
  query belong to image b: beam search's layout, with the image in `decoding.Shared`),
  which then share one copy of the image's keys and values.
  Returns `(context [N, D], alpha [N, R])`.
  """
  b, n = keys.shape[0], query.shape[0]
  query = query.reshape(b, n // b, query.shape[-1])  # [B, N/B, A]
  logits = score(jnp.tanh(keys[:, None] + query[:, :, None]))[..., 0]  # [B, N/B, R]
  logits = jnp.where(mask[:, None], logits, -1e9)
  alpha = jax.nn.softmax(logits, axis=-1)
  context = jnp.einsum("bnr,brd->bnd", alpha, values)
  return context.reshape(n, values.shape[-1]), alpha.reshape(n, keys.shape[1])
