"""Show, Attend and Tell with soft attention (Xu et al. 2015).

Over L annotation vectors a_i (a grid of CNN features, or regions):
  h_0 = tanh(f_init,h(mean_i a_i)),  c_0 = tanh(f_init,c(mean_i a_i))         (sec. 3.1.2)
  e_ti = w^T tanh(W_a a_i + W_h h_{t-1}),  alpha_t = softmax(e_t)                (eq. 4-5)
  beta_t = sigmoid(f_beta(h_{t-1}));  z_t = beta_t * sum_i alpha_ti a_i           (sec. 4.2.1)
  i, f, o, g from T[E y_{t-1}; h_{t-1}; z_t];  c_t, h_t as an LSTM                (eq. 1-3)
  p(y_t) = softmax(L_o(E y_{t-1} + L_h h_t + L_z z_t))                            (eq. 7)

The doubly stochastic regulariser lambda * sum_i (1 - sum_t alpha_ti)^2 (eq. 14)
is computed from the returned attention weights by the task, over real words.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmzoo import decoding
from mmzoo.models.captioner import Captioner, attend
from mmzoo.nn import recurrent, vision


class ShowAttendTell(Captioner):
  """Attributes (besides `Captioner`'s): attention_dim, the size of W_a a_i; gate, f_beta."""

  attention_dim: int = 256
  gate: bool = True

  def setup_decoder(self) -> None:
    self.init_h = nn.Dense(self.hidden_size, name="init_h")
    self.init_c = nn.Dense(self.hidden_size, name="init_c")
    self.w_a = nn.Dense(self.attention_dim, name="w_a")
    self.w_h = nn.Dense(self.attention_dim, use_bias=False, name="w_h")
    self.score = nn.Dense(1, name="score")
    self.f_beta = nn.Dense(1, name="f_beta")
    self.lstm = recurrent.Cell("lstm", self.hidden_size)
    self.l_h = nn.Dense(self.embed_dim, name="l_h")
    self.l_z = nn.Dense(self.embed_dim, use_bias=False, name="l_z")
    self.l_o = nn.Dense(self.vocab_size, name="l_o")

  def init_state(self, features: vision.VisualFeatures):
    mask = features.mask
    count = jnp.maximum(mask.sum(-1, keepdims=True), 1).astype(jnp.float32)
    mean = jnp.sum(features.regions * mask[..., None], axis=1) / count
    image = {"regions": features.regions, "keys": self.w_a(features.regions), "mask": mask}
    return {"h": jnp.tanh(self.init_h(mean)), "c": jnp.tanh(self.init_c(mean)),
            "image": decoding.Shared(image)}

  def step(self, state, tokens: jax.Array, deterministic: bool = True):
    h, c = state["h"], state["c"]
    image = state["image"].value
    z, alpha = attend(image["keys"], self.w_h(h), image["regions"], image["mask"], self.score)
    beta = jax.nn.sigmoid(self.f_beta(h)) if self.gate else jnp.ones((h.shape[0], 1))
    z = beta * z
    y = self.embed(tokens)
    h, c = self.lstm(jnp.concatenate([self.dropout(y, deterministic=deterministic), z], -1),
                     (h, c))
    out = y + self.l_h(self.dropout(h, deterministic=deterministic)) + self.l_z(z)
    logits = self.l_o(self.dropout(out, deterministic=deterministic))
    return logits, {**state, "h": h, "c": c}, {"attention": alpha, "beta": beta[:, 0]}
