"""Recurrent layers: vanilla RNN, LSTM and GRU cells scanned over time.

The gate math is PyTorch's, so that weights move between the two frameworks
unchanged (see `from_torch`):

  RNN:   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
  LSTM:  [i, f, g, o] = W_ih x + b_ih + W_hh h + b_hh
         c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(c')
  GRU:   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
         z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
         n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = (1 - z) * n + z * h

`Recurrent` stacks layers (optionally bidirectional) and runs each as one
`lax.scan` over time. The input projection `x W_ih + b_ih` of every time step
is a single large matmul outside the scan; only `h W_hh` stays inside the loop.

Carries follow PyTorch's ordering: a tuple with one entry per layer and
direction (index `layer * num_directions + direction`), where an entry is `h`
for RNN/GRU and `(h, c)` for LSTM, each `<float32>[batch, hidden]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CellKind = Literal["rnn", "lstm", "gru"]
NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]
Carry = Any  # tuple over layer*direction of h or (h, c)


def torch_default_init(hidden_size: int) -> Initializer:
  """PyTorch's recurrent-layer init: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
  bound = 1.0 / math.sqrt(hidden_size)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _cell_update(cell: CellKind, xw: jax.Array, h: jax.Array, c: jax.Array | None,
                 w_hh: jax.Array, b_hh: jax.Array | None):
  """One step of a cell given the precomputed input projection `xw`.

  For RNN and LSTM `b_hh` is already folded into `xw` (pass None); the GRU
  needs it separately because the reset gate multiplies `W_hn h + b_hn`.
  Returns `(h', c')` (c' is None except for LSTM).
  """
  hw = h @ w_hh
  if cell == "rnn":
    return jnp.tanh(xw + hw), None
  if cell == "lstm":
    i, f, g, o = jnp.split(xw + hw, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c_new), c_new
  hw = hw + b_hh
  xr, xz, xn = jnp.split(xw, 3, axis=-1)
  hr, hz, hn = jnp.split(hw, 3, axis=-1)
  r = jax.nn.sigmoid(xr + hr)
  z = jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * hn)
  return (1.0 - z) * n + z * h, None


def cell_step(cell: CellKind, params: Mapping[str, jax.Array], x: jax.Array, carry):
  """A single cell step on `<float32>[batch, features]`; returns the new carry.

  The scanned `Recurrent` module computes the same thing; this form is what
  step-by-step decoders and the finite-difference tests use.
  """
  xw = x @ params["w_ih"] + params["b_ih"]
  if cell == "lstm":
    h, c = carry
    h, c = _cell_update(cell, xw + params["b_hh"], h, c, params["w_hh"], None)
    return (h, c)
  if cell == "rnn":
    return _cell_update(cell, xw + params["b_hh"], carry, None, params["w_hh"], None)[0]
  return _cell_update(cell, xw, carry, None, params["w_hh"], params["b_hh"])[0]


def reverse_within_lengths(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
  """Reverses `<T>[time, batch, ...]` along time, each example within its length.

  Positions at or past an example's length stay where they are, so this is its
  own inverse and padding never moves into the valid region.
  """
  num_steps = x.shape[0]
  if lengths is None:
    return x[::-1]
  t = jnp.arange(num_steps)[:, None]  # [time, 1]
  src = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [time, batch]
  src = src.reshape(src.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, src, axis=0)


def scan_layer(cell: CellKind, xw: jax.Array, w_hh: jax.Array, b_hh: jax.Array | None,
               carry, mask: jax.Array | None, unroll: int = 1):
  """Runs one direction of one layer over time.

  Args:
    cell: the cell kind.
    xw: `<float32>[time, batch, gates * hidden]`, the input projection (with
      `b_hh` folded in for RNN/LSTM).
    w_hh: `<float32>[hidden, gates * hidden]`.
    b_hh: the hidden bias for GRU, else None.
    carry: `h` or `(h, c)`, each `<float32>[batch, hidden]`.
    mask: `<bool>[time, batch, 1]`, False past an example's length, or None.
    unroll: scan unroll factor.

  Returns:
    `(outputs <float32>[time, batch, hidden], final carry)`; outputs are zero
    where the mask is False and the carry stops updating there.
  """
  is_lstm = cell == "lstm"

  def step(carry, inputs):
    xw_t, m_t = inputs
    h, c = carry if is_lstm else (carry, None)
    h_new, c_new = _cell_update(cell, xw_t, h, c, w_hh, b_hh)
    if m_t is not None:
      h_new = jnp.where(m_t, h_new, h)
      out = jnp.where(m_t, h_new, 0.0)
      if is_lstm:
        c_new = jnp.where(m_t, c_new, c)
    else:
      out = h_new
    return ((h_new, c_new) if is_lstm else h_new), out

  carry, outputs = jax.lax.scan(step, carry, (xw, mask), unroll=unroll)
  return outputs, carry


class _LayerWeights(nn.Module):
  """The four PyTorch tensors of one layer and direction, stored transposed."""

  in_features: int
  hidden_size: int
  gates: int
  kernel_init: Initializer
  bias_init: Initializer
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    g = self.gates * self.hidden_size
    return {
        "w_ih": self.param("w_ih", self.kernel_init, (self.in_features, g), self.dtype),
        "w_hh": self.param("w_hh", self.kernel_init, (self.hidden_size, g), self.dtype),
        "b_ih": self.param("b_ih", self.bias_init, (g,), self.dtype),
        "b_hh": self.param("b_hh", self.bias_init, (g,), self.dtype),
    }


class Recurrent(nn.Module):
  """A stack of RNN/LSTM/GRU layers over `<float32>[batch, time, features]`.

  Attributes:
    cell: "rnn", "lstm" or "gru".
    hidden_size: units per layer and direction.
    num_layers: stacked layers.
    bidirectional: run a reverse direction per layer and concatenate.
    dropout_rate: dropout on the outputs of every layer but the last (as
      PyTorch's `dropout`); active only when `deterministic=False`.
    kernel_init / bias_init: None means PyTorch's U(-1/sqrt(H), 1/sqrt(H)).
    unroll: `lax.scan` unroll factor.
  """

  cell: CellKind
  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  kernel_init: Initializer | None = None
  bias_init: Initializer | None = None
  unroll: int = 1

  @property
  def num_directions(self) -> int:
    return 2 if self.bidirectional else 1

  def initialize_carry(self, batch_size: int, dtype=jnp.float32) -> Carry:
    """Zero carry for `batch_size` examples."""
    zeros = jnp.zeros((batch_size, self.hidden_size), dtype)
    one = (zeros, zeros) if self.cell == "lstm" else zeros
    return tuple(one for _ in range(self.num_layers * self.num_directions))

  @nn.compact
  def __call__(self, inputs: jax.Array, lengths: jax.Array | None = None,
               initial_carry: Carry | None = None, deterministic: bool = True):
    """Runs the stack.

    Args:
      inputs: `<float32>[batch, time, features]`.
      lengths: `<int32>[batch]` valid steps per example, or None for all.
      initial_carry: as returned by `initialize_carry`, or None for zeros.
      deterministic: disables dropout when True.

    Returns:
      `(outputs, final_carry)`: the top layer's `<float32>[batch, time,
      directions * hidden]` (zero past each length) and the carry after each
      example's last valid step.
    """
    if self.cell not in NUM_GATES:
      raise ValueError(f"unknown cell {self.cell!r}; expected one of {sorted(NUM_GATES)}")
    batch_size, num_steps, _ = inputs.shape
    gates = NUM_GATES[self.cell]
    kernel_init = self.kernel_init or torch_default_init(self.hidden_size)
    bias_init = self.bias_init or torch_default_init(self.hidden_size)
    if initial_carry is None:
      initial_carry = self.initialize_carry(batch_size, inputs.dtype)
    mask = None
    if lengths is not None:
      mask = (jnp.arange(num_steps)[:, None] < lengths[None, :])[..., None]  # [T, B, 1]

    x = jnp.swapaxes(inputs, 0, 1)  # time-major: [T, B, F]
    final_carry = []
    for layer in range(self.num_layers):
      in_features = x.shape[-1]
      outputs = []
      for direction in range(self.num_directions):
        name = f"l{layer}" + ("_reverse" if direction else "")
        w = _LayerWeights(in_features, self.hidden_size, gates, kernel_init, bias_init,
                          inputs.dtype, name=name)()
        x_dir = reverse_within_lengths(x, lengths) if direction else x
        xw = x_dir @ w["w_ih"] + w["b_ih"]  # all time steps in one matmul
        b_hh = w["b_hh"] if self.cell == "gru" else None
        if b_hh is None:
          xw = xw + w["b_hh"]
        carry = initial_carry[layer * self.num_directions + direction]
        out, carry = scan_layer(self.cell, xw, w["w_hh"], b_hh, carry, mask, self.unroll)
        outputs.append(reverse_within_lengths(out, lengths) if direction else out)
        final_carry.append(carry)
      x = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
      if self.dropout_rate > 0 and layer < self.num_layers - 1:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    return jnp.swapaxes(x, 0, 1), tuple(final_carry)


def from_torch(state_dict: Mapping[str, Any], cell: CellKind, num_layers: int,
               bidirectional: bool = False) -> tuple[Recurrent, dict]:
  """Builds a `Recurrent` and its params from a PyTorch nn.LSTM/GRU/RNN state dict.

  Args:
    state_dict: numpy arrays (or anything `np.asarray` accepts) under
      PyTorch's names: `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
      `bias_hh_l{k}`, plus the `_reverse` variants when bidirectional.
    cell: "lstm", "gru" or "rnn" (tanh).
    num_layers: the PyTorch module's `num_layers`.
    bidirectional: the PyTorch module's `bidirectional`.

  Returns:
    `(module, params)` with `module.apply({"params": params}, x)` equal to
    the PyTorch module with `batch_first=True`.
  """
  if cell not in NUM_GATES:
    raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(NUM_GATES)}")
  gates = NUM_GATES[cell]
  w_hh0 = np.asarray(state_dict["weight_hh_l0"])
  hidden_size = w_hh0.shape[1]
  if w_hh0.shape[0] != gates * hidden_size:
    raise ValueError(f"weight_hh_l0 has shape {w_hh0.shape}, which is not a {cell} "
                     f"layer (expected [{gates} * hidden, hidden])")
  params = {}
  expected = set()
  for layer in range(num_layers):
    for suffix in ("", "_reverse") if bidirectional else ("",):
      key = f"l{layer}{suffix}"
      names = {n: f"{n}_l{layer}{suffix}"
               for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
      expected |= set(names.values())
      missing = [v for v in names.values() if v not in state_dict]
      if missing:
        raise ValueError(f"state dict lacks {missing} for a {num_layers}-layer "
                         f"{'bidirectional ' if bidirectional else ''}{cell}")
      params[key] = {
          "w_ih": jnp.asarray(np.asarray(state_dict[names["weight_ih"]]).T),
          "w_hh": jnp.asarray(np.asarray(state_dict[names["weight_hh"]]).T),
          "b_ih": jnp.asarray(np.asarray(state_dict[names["bias_ih"]])),
          "b_hh": jnp.asarray(np.asarray(state_dict[names["bias_hh"]])),
      }
  extra = sorted(set(state_dict) - expected)
  if extra:
    raise ValueError(f"state dict has keys {extra} that a {num_layers}-layer "
                     f"{'bidirectional ' if bidirectional else ''}{cell} does not use "
                     "(projections via proj_size are not supported)")
  module = Recurrent(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                     bidirectional=bidirectional)
  return module, params
