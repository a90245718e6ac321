"""Show and Tell (Vinyals et al. 2015), and the lectures' image-in-the-recurrence RNN.

Show and Tell (`variant="vinyals"`), eqs. 10-12 of the paper:
  x_{-1} = W_I CNN(I)            the image is the LSTM's first input, once
  x_t = W_e S_t,  t >= 0         then the words
  p_{t+1} = softmax(W_o LSTM(x_t))

The lectures' vanilla RNN captioner (`variant="rnn"`) feeds the image into
every step of the recurrence instead:
  h_t = tanh(W_xh x_t + W_hh h_{t-1} + W_ih v),   p_t = softmax(W_hy h_t),
with v the encoder's pooled image vector.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmzoo.models.captioner import Captioner
from mmzoo.nn import recurrent, vision


class ShowTell(Captioner):
  variant: Literal["vinyals", "rnn"] = "vinyals"

  def setup_decoder(self) -> None:
    if self.variant == "vinyals":
      self.image_proj = nn.Dense(self.embed_dim, name="image_proj")   # W_I
      self.lstm = recurrent.Cell("lstm", self.hidden_size)
    elif self.variant == "rnn":
      self.w_ih = nn.Dense(self.hidden_size, name="w_ih")              # image -> hidden
      self.w_xh = nn.Dense(self.hidden_size, use_bias=False, name="w_xh")
      self.w_hh = nn.Dense(self.hidden_size, use_bias=False, name="w_hh")
    else:
      raise ValueError(f"unknown Show and Tell variant {self.variant!r}; use vinyals or rnn")
    self.output = nn.Dense(self.vocab_size, name="output")             # W_o / W_hy

  def init_state(self, features: vision.VisualFeatures):
    batch = features.pooled.shape[0]
    if self.variant == "vinyals":
      zero = jnp.zeros((batch, self.hidden_size), jnp.float32)
      return {"carry": self.lstm(self.image_proj(features.pooled), (zero, zero))}
    return {"h": jnp.zeros((batch, self.hidden_size), jnp.float32),
            "image": self.w_ih(features.pooled)}

  def step(self, state, tokens: jax.Array, deterministic: bool = True):
    x = self.dropout(self.embed(tokens), deterministic=deterministic)
    if self.variant == "vinyals":
      carry = self.lstm(x, state["carry"])
      h, state = carry[0], {"carry": carry}
    else:
      h = jnp.tanh(self.w_xh(x) + self.w_hh(state["h"]) + state["image"])
      state = {"h": h, "image": state["image"]}
    logits = self.output(self.dropout(h, deterministic=deterministic))
    return logits, state, {}
