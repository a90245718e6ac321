"""Visual-semantic embeddings: VSE, VSE++ and order embeddings.

- Kiros, Salakhutdinov, Zemel 2014, "Unifying Visual-Semantic Embeddings with
  Multimodal Neural Language Models": an image encoder plus a linear map, and a
  recurrent sentence encoder, into one space where cosine similarity ranks;
  trained with the bidirectional hinge loss summed over negatives.
- Faghri, Fleet, Kiros, Fidler 2018, "VSE++": the same model trained on the
  hardest negative of each query (max violation).
- Vendrov, Kiros, Fidler, Urtasun 2016, "Order-Embeddings of Images and
  Language": the embeddings are L2-normalised and made non-negative (absolute
  value), as in the paper's code, and compared by the order-violation penalty
  E(x, y) = ||max(0, y - x)||^2 instead of cosine. Without the normalisation a
  caption can shrink towards the origin, which every image dominates (E = 0):
  it then tops every image's ranking.

The model is params + pure functions: `embed_images` and `embed_captions`
map each side into the joint space; the losses live in `mmzoo.losses`.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmzoo.nn import text, vision


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class JointEmbedding(nn.Module):
  """An image tower and a sentence tower into a `embed_dim`-dimensional joint space.

  Attributes:
    vocab_size: the sentence tokenizer's vocabulary size.
    embed_dim: joint-space size (1024 in VSE++).
    encoder: `vision.build_encoder` name ("small_cnn", "resnet50", "precomputed", ...).
    encoder_kwargs: options of that encoder, as a tuple of (name, value) pairs.
    frozen_encoder: stop gradients into the image encoder (VSE++'s first phase).
    pooling_source: "pooled" (the encoder's pooled vector) is what the linear
      map reads.
    text_kind / word_dim / text_hidden / text_pooling: the sentence encoder
      (`text.SentenceEncoder`); its output is mapped linearly to `embed_dim`
      unless it already has that size (VSE++ uses the GRU state as it is).
    space: "cosine" (L2-normalised, VSE/VSE++) or "order" (L2-normalised, then
      absolute value: order embeddings).
  """

  vocab_size: int
  embed_dim: int = 1024
  encoder: str = "small_cnn"
  encoder_kwargs: tuple = ()
  frozen_encoder: bool = False
  text_kind: Literal["gru", "lstm", "bow"] = "gru"
  word_dim: int = 300
  text_hidden: int = 1024
  text_pooling: Literal["last", "mean"] = "last"
  space: Literal["cosine", "order"] = "cosine"

  def setup(self):
    self.image_encoder = vision.build_encoder(self.encoder, frozen=self.frozen_encoder,
                                              **dict(self.encoder_kwargs))
    self.image_proj = nn.Dense(self.embed_dim, kernel_init=_xavier_uniform, name="image_proj")
    self.sentence_encoder = text.SentenceEncoder(
        self.vocab_size, self.word_dim, self.text_kind, self.text_hidden,
        pooling=self.text_pooling)
    if self.sentence_encoder.features != self.embed_dim:
      self.text_proj = nn.Dense(self.embed_dim, kernel_init=_xavier_uniform, name="text_proj")
    else:
      self.text_proj = None

  def _to_space(self, x: jax.Array) -> jax.Array:
    if self.space == "order":
      return jnp.abs(l2_normalize(x))
    if self.space == "cosine":
      return l2_normalize(x)
    raise ValueError(f"unknown space {self.space!r}; use cosine or order")

  def embed_images(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Normalised images `<float32>[B, H, W, 3]` (or precomputed features) -> `[B, embed_dim]`."""
    features = self.image_encoder(images, train=train)
    return self._to_space(self.image_proj(features.pooled.astype(jnp.float32)))

  def embed_captions(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """`<int32>[B, T]` tokens with `<int32>[B]` lengths -> `[B, embed_dim]`."""
    x = self.sentence_encoder(tokens, lengths)
    if self.text_proj is not None:
      x = self.text_proj(x)
    return self._to_space(x)

  def __call__(self, images, tokens, lengths, train: bool = False):
    return self.embed_images(images, train), self.embed_captions(tokens, lengths)


def _xavier_uniform(key, shape, dtype=jnp.float32):
  """VSE++'s init of the image projection: U(+-sqrt(6 / (fan_in + fan_out)))."""
  return nn.initializers.xavier_uniform()(key, shape, dtype)
