"""Bottom-Up and Top-Down attention captioner (Anderson et al. 2018, section 3.2).

Over k image features v_i (bottom-up regions, or a CNN grid) with mean v_bar:
  h1_t = LSTM_att([h2_{t-1}; v_bar; W_e Pi_t], h1_{t-1})                  (eq. 2)
  a_ti = w_a^T tanh(W_va v_i + W_ha h1_t),  alpha_t = softmax(a_t)          (eq. 3-4)
  v_hat_t = sum_i alpha_ti v_i                                             (eq. 5)
  h2_t = LSTM_lang([v_hat_t; h1_t], h2_{t-1})                              (eq. 6)
  p(y_t) = softmax(W_p h2_t + b_p)                                         (eq. 7)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmzoo import decoding
from mmzoo.models.captioner import Captioner, attend
from mmzoo.nn import recurrent, vision


class UpDown(Captioner):
  """Attributes (besides `Captioner`'s): attention_dim, the size of W_va v_i."""

  attention_dim: int = 256

  def setup_decoder(self) -> None:
    self.attention_lstm = recurrent.Cell("lstm", self.hidden_size)
    self.language_lstm = recurrent.Cell("lstm", self.hidden_size)
    self.w_va = nn.Dense(self.attention_dim, use_bias=False, name="w_va")
    self.w_ha = nn.Dense(self.attention_dim, name="w_ha")
    self.w_a = nn.Dense(1, use_bias=False, name="w_a")
    self.w_p = nn.Dense(self.vocab_size, name="w_p")

  def init_state(self, features: vision.VisualFeatures):
    mask = features.mask
    count = jnp.maximum(mask.sum(-1, keepdims=True), 1).astype(jnp.float32)
    mean = jnp.sum(features.regions * mask[..., None], axis=1) / count
    zero = jnp.zeros((mean.shape[0], self.hidden_size), jnp.float32)
    image = {"regions": features.regions, "keys": self.w_va(features.regions), "mask": mask}
    return {"att": (zero, zero), "lang": (zero, zero), "mean": mean,
            "image": decoding.Shared(image)}

  def step(self, state, tokens: jax.Array, deterministic: bool = True):
    h2, image = state["lang"][0], state["image"].value
    x = self.dropout(self.embed(tokens), deterministic=deterministic)
    h1, c1 = self.attention_lstm(jnp.concatenate([h2, state["mean"], x], -1), state["att"])
    v_hat, alpha = attend(image["keys"], self.w_ha(h1), image["regions"], image["mask"],
                          self.w_a)
    h2, c2 = self.language_lstm(jnp.concatenate([v_hat, h1], -1), state["lang"])
    logits = self.w_p(self.dropout(h2, deterministic=deterministic))
    return logits, {**state, "att": (h1, c1), "lang": (h2, c2)}, {"attention": alpha}
