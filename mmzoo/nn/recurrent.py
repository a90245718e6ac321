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
On CPUs where they fit, LSTM and GRU layers without lengths run instead
through fused kernels (`cpu_kernels.py`) that compute the same function faster.

Carries follow PyTorch's ordering: a tuple with one entry per layer and
direction (index `layer * num_directions + direction`), where an entry is `h`
for RNN/GRU and `(h, c)` for LSTM, each `<float32>[batch, hidden]`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmzoo.nn import cpu_kernels

CellKind = Literal["rnn", "rnn_relu", "lstm", "gru"]
NUM_GATES = {"rnn": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]
Carry = Any  # tuple over layer*direction of h or (h, c)
DEFAULT_UNROLL = 1


def torch_default_init(hidden_size: int) -> Initializer:
  """PyTorch's recurrent-layer init: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
  bound = 1.0 / math.sqrt(hidden_size)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _cell_forward(cell: CellKind, xw: jax.Array, h: jax.Array, c: jax.Array | None,
                  w_hh: jax.Array, b_x: jax.Array | None, b_h: jax.Array | None):
  """One step of a cell given the input projection `xw = x W_ih` (no bias).

  `b_x` is the bias added to `xw` (for RNN/LSTM `b_ih + b_hh`, for GRU
  `b_ih`) and `b_h` the GRU's `b_hh`, which its reset gate multiplies (None
  for RNN/LSTM); either may be None for no bias.

  Returns `(h', c', act, hn)`: c' is None except for LSTM; `act`, shaped like
  `xw`, holds the activations the hand-written backward pass needs (`h'` for
  RNN, the gates `[i, f, g, o]` for LSTM, `[r, z, n]` for GRU) and `hn` is the
  GRU's `W_hn h + b_hn` (None for RNN/LSTM).
  """
  hw = h @ w_hh
  if b_x is not None:
    xw = xw + b_x
  if cell == "rnn":
    h_new = jnp.tanh(xw + hw)
    return h_new, None, h_new, None
  if cell == "rnn_relu":
    h_new = jax.nn.relu(xw + hw)
    return h_new, None, h_new, None
  if cell == "lstm":
    i, f, g, o = jnp.split(xw + hw, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c_new = f * c + i * g
    return o * jnp.tanh(c_new), c_new, jnp.concatenate([i, f, g, o], axis=-1), None
  if b_h is not None:
    hw = hw + b_h
  xr, xz, xn = jnp.split(xw, 3, axis=-1)
  hr, hz, hn = jnp.split(hw, 3, axis=-1)
  r = jax.nn.sigmoid(xr + hr)
  z = jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * hn)
  return (1.0 - z) * n + z * h, None, jnp.concatenate([r, z, n], axis=-1), hn


def _split_biases(cell: CellKind, b_ih: jax.Array | None, b_hh: jax.Array | None):
  """PyTorch's two biases as `(b_x, b_h)` for `_cell_forward`."""
  if cell == "gru":
    return b_ih, b_hh
  if b_ih is None or b_hh is None:
    return (b_hh if b_ih is None else b_ih), None
  return b_ih + b_hh, None


def cell_step(cell: CellKind, params: Mapping[str, jax.Array], x: jax.Array, carry):
  """A single cell step on `<float32>[batch, features]`; returns the new carry.

  The scanned `Recurrent` module computes the same thing; this form is what
  step-by-step decoders and the finite-difference tests use.
  """
  b_x, b_h = _split_biases(cell, params["b_ih"], params["b_hh"])
  h, c = carry if cell == "lstm" else (carry, None)
  h, c, _, _ = _cell_forward(cell, x @ params["w_ih"], h, c, params["w_hh"], b_x, b_h)
  return (h, c) if cell == "lstm" else h


def reverse_within_lengths(x: jax.Array, lengths: jax.Array | None,
                           time_axis: int = 0) -> jax.Array:
  """Reverses `x` along `time_axis`, each example within its length.

  `x` is `<T>[time, batch, ...]` (or `[batch, time, ...]` with
  `time_axis=1`). Positions at or past an example's length stay where they
  are, so this is its own inverse and padding never moves into the valid region.
  """
  num_steps = x.shape[time_axis]
  if lengths is None:
    return jnp.flip(x, time_axis)
  t = jnp.arange(num_steps)[:, None]  # [time, 1]
  src = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [time, batch]
  if time_axis == 1:
    src = src.T
  src = src.reshape(src.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, src, axis=time_axis)


def recurrent_layer(cell: CellKind, x: jax.Array, w_ih: jax.Array | None,
                    b_ih: jax.Array | None, w_hh: jax.Array, b_hh: jax.Array | None, carry,
                    mask: jax.Array | None,
                    unroll: int = DEFAULT_UNROLL, time_axis: int = 0, fused: bool = True):
  """Runs one direction of one layer over time.

  The input projection `x W_ih` of all steps is one large matmul before the
  loop; only `h W_hh` and the gate math run step by step. Differentiable
  with a hand-written backward pass (see `_recurrence_bwd`), as cuDNN and
  PyTorch do it: its loop computes only the gates' pre-activation gradients
  and `dh`; `dW_ih`, `dW_hh` and `dx` are then large matmuls over all steps.
  Forward-mode differentiation (`jax.jvp`) is not supported.

  Args:
    cell: the cell kind.
    x: `<float32>[time, batch, features]`, or `[batch, time, features]` with
      `time_axis=1`.
    w_ih: `<float32>[features, gates * hidden]`, or None when `x` is the
      input projection `x W_ih` already (without bias).
    b_ih: `<float32>[gates * hidden]` or None.
    w_hh: `<float32>[hidden, gates * hidden]`.
    b_hh: `<float32>[gates * hidden]` or None.
    carry: `h` or `(h, c)`, each `<float32>[batch, hidden]`.
    mask: `<bool>[time, batch, 1]` (`[batch, time, 1]` with `time_axis=1`),
      True for each example's first steps and False past its length, or None.
    unroll: loop unroll factor (speed only; 1 is fastest on CPU).
    time_axis: 0 for time-major arrays, 1 for batch-major ones.
    fused: run an LSTM or GRU without a mask through the fused CPU kernels
      where they apply (`cpu_kernels.applies`: on CPU, float32, hidden a
      multiple of 64, the kernels built); the same function either way (speed only).

  Returns:
    `(outputs <float32>[time, batch, hidden] (or batch-major), final carry)`;
    outputs are zero where the mask is False and the carry stops updating there.
  """
  if x.shape[time_axis] == 0:
    shape = list(x.shape[:-1]) + [w_hh.shape[0]]
    return jnp.zeros(shape, x.dtype), carry
  if fused and cpu_kernels.applies(cell, x, w_hh, carry, mask):
    return _fused(cell, time_axis, x, w_ih, b_ih, w_hh, b_hh, carry)
  return _recurrence(cell, unroll, time_axis, x, w_ih, b_ih, w_hh, b_hh, carry, mask)


def scan_layer(cell: CellKind, xw: jax.Array, w_hh: jax.Array, b_hh: jax.Array | None,
               carry, mask: jax.Array | None, unroll: int = DEFAULT_UNROLL, fused: bool = True):
  """`recurrent_layer` given the input projection `xw` instead of `x` and `W_ih`.

  `xw` is `<float32>[time, batch, gates * hidden]` with `b_ih` added and, for
  RNN/LSTM, `b_hh` too (pass `b_hh=None`); the GRU takes `b_hh` separately
  because its reset gate multiplies `W_hn h + b_hn`.
  """
  if xw.shape[0] == 0:
    return jnp.zeros((0, xw.shape[1], w_hh.shape[0]), xw.dtype), carry
  if fused and cpu_kernels.applies(cell, xw, w_hh, carry, mask):
    return _fused(cell, 0, xw, None, None, w_hh, b_hh, carry)
  return _recurrence(cell, unroll, 0, xw, None, None, w_hh, b_hh, carry, mask)


def _take(a: jax.Array | None, t, axis: int):
  """`a`'s step `t` along `axis` (None for None)."""
  return None if a is None else jax.lax.dynamic_index_in_dim(a, t, axis, keepdims=False)


def _time_loop(step, carry, buf: jax.Array, out_shapes, *, axis: int, reverse: bool,
               rewrite: bool, unroll: int):
  """Runs `step(carry, t, buf_t) -> (carry, new_buf_t, outs_t)` over all steps t.

  `buf` is `[..., time (at axis), ...]`; with `rewrite` its step t is replaced
  by `new_buf_t` (else `new_buf_t` is ignored and `buf` comes back as is).
  `outs_t` holds one array (or None) per entry of `out_shapes` (a
  `jax.ShapeDtypeStruct` of one step, or None); they come back stacked along
  `axis`. Returns `(carry, buf, outs)`.

  With `unroll == 1` every array is written in place: the step's input is
  read from `buf` right after the previous step's write (and carried over),
  so that nothing reads `buf` before a write it cannot be ordered with,
  which would make XLA copy the whole buffer every step; the outputs go to
  buffers carried through the loop, in `axis` layout, so no transposes follow.
  """
  num_steps = buf.shape[axis]
  steps = jnp.arange(num_steps)
  if unroll != 1:  # a plain scan: stacked outputs, moved to `axis` afterwards
    def scan_step(carry, t):
      carry, new_t, outs = step(carry, t, _take(buf, t, axis))
      return carry, (new_t if rewrite else None, outs)

    carry, (new, outs) = jax.lax.scan(scan_step, carry, steps, reverse=reverse, unroll=unroll)
    move = (lambda a: a) if axis == 0 else (lambda a: jnp.moveaxis(a, 0, axis))
    return carry, move(new) if rewrite else buf, tuple(
        None if o is None else move(o) for o in outs)

  def put(a, v, t):
    return jax.lax.dynamic_update_index_in_dim(a, v, t, axis)

  def loop_step(state, t):
    carry, buf, outs, buf_t = state
    carry, new_t, outs_t = step(carry, t, buf_t if rewrite else _take(buf, t, axis))
    outs = tuple(None if o is None else put(o, v, t) for o, v in zip(outs, outs_t, strict=True))
    if rewrite:
      buf = put(buf, new_t, t)
      buf_t = _take(buf, jnp.maximum(t - 1, 0) if reverse else jnp.minimum(t + 1, num_steps - 1),
                    axis)
    return (carry, buf, outs, buf_t), None

  def stacked(spec):
    shape = list(spec.shape)
    shape.insert(axis, num_steps)
    return jnp.zeros(shape, spec.dtype)

  outs = tuple(None if s is None else stacked(s) for s in out_shapes)
  first = _take(buf, num_steps - 1 if reverse else 0, axis) if rewrite else None
  (carry, buf, outs, _), _ = jax.lax.scan(loop_step, (carry, buf, outs, first), steps,
                                          reverse=reverse)
  return carry, buf, outs


def _recurrence_forward(cell: CellKind, unroll: int, axis: int, x, w_ih, b_ih, w_hh, b_hh,
                        carry, mask, save: bool):
  """The forward loop: `(final carry, outputs)`, and with `save` the residuals.

  The residuals are `(act, c_prev, hn)` (None where a cell has no such
  value), each stacked over time; `act` (see `_cell_forward`) is written over
  the input projection `xw` step by step, in place.
  """
  is_lstm, is_gru = cell == "lstm", cell == "gru"
  xw = x if w_ih is None else x @ w_ih  # all time steps in one matmul
  b_x, b_h = _split_biases(cell, b_ih, b_hh)
  h0 = carry[0] if is_lstm else carry
  state = jax.ShapeDtypeStruct(h0.shape, h0.dtype)

  def step(carry, t, xw_t):
    m_t = _take(mask, t, axis)
    h, c = carry if is_lstm else (carry, None)
    h_new, c_new, act, hn = _cell_forward(cell, xw_t, h, c, w_hh, b_x, b_h)
    if m_t is not None:
      h_new = jnp.where(m_t, h_new, h)
      out = jnp.where(m_t, h_new, 0.0)
      if is_lstm:
        c_new = jnp.where(m_t, c_new, c)
    else:
      out = h_new
    carry = (h_new, c_new) if is_lstm else h_new
    if not save:
      return carry, None, (out,)
    return carry, act, (out, c, hn)  # c = c_{t-1}, for df

  if save:
    out_shapes = (state, state if is_lstm else None, state if is_gru else None)
    carry, act, (outputs, c_prev, hn) = _time_loop(
        step, carry, xw, out_shapes, axis=axis, reverse=False, rewrite=True, unroll=unroll)
    return carry, outputs, (act, c_prev, hn)
  carry, _, (outputs,) = _time_loop(step, carry, xw, (state,), axis=axis, reverse=False,
                                    rewrite=False, unroll=unroll)
  return carry, outputs, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _recurrence(cell: CellKind, unroll: int, axis: int, x, w_ih, b_ih, w_hh, b_hh, carry,
                mask):
  carry, outputs, _ = _recurrence_forward(cell, unroll, axis, x, w_ih, b_ih, w_hh, b_hh, carry,
                                          mask, save=False)
  return outputs, carry


def _recurrence_fwd(cell: CellKind, unroll: int, axis: int, x, w_ih, b_ih, w_hh, b_hh, carry,
                    mask):
  final, outputs, saved = _recurrence_forward(cell, unroll, axis, x, w_ih, b_ih, w_hh, b_hh,
                                              carry, mask, save=True)
  h0 = carry[0] if cell == "lstm" else carry
  final_c = final[1] if cell == "lstm" else None
  residuals = (x, w_ih, b_ih, w_hh, b_hh, mask, h0, final_c, outputs, saved)
  return (outputs, final), residuals


def _recurrence_bwd(cell: CellKind, unroll: int, axis: int, residuals, cotangents):
  """Backward of `_recurrence`: a reverse loop for the pre-activation gradients.

  Per step it computes only the gates' pre-activation gradient `dz_t` (written
  over the saved activations, in place) and `dh_{t-1} = dz_t W_hh^T` (+ the
  GRU's direct path); the weight gradients (`dW_hh = sum_t h_{t-1}^T dz_t`,
  ...) and `dx` are then one matmul each over all steps.
  """
  is_lstm, is_gru = cell == "lstm", cell == "gru"
  x, w_ih, b_ih, w_hh, b_hh, mask, h0, final_c, outputs, (act, c_prev, hn) = residuals
  d_out, d_final = cotangents
  w_hh_t = w_hh.T
  # h_{t-1} at every step: the previous output, as the mask is False only past
  # each example's length (where the gradients below are zero).
  h_prev = _previous_states(h0, outputs, axis)

  def step(carry, t, act_t):
    d_out_t, h_prev_t, c_prev_t, hn_t, m_t = (
        _take(a, t, axis) for a in (d_out, h_prev if is_gru else None, c_prev, hn, mask))
    if is_lstm:
      dh, dc, c_t = carry
    else:
      dh, dc, c_t = carry, None, None
    # Past an example's length the step passes the carry through unchanged.
    dh_new = dh + d_out_t
    if m_t is not None:
      dh_new = jnp.where(m_t, dh_new, 0.0)
      dh_skip = jnp.where(m_t, 0.0, dh)
    dhw = None
    if cell == "rnn":
      dz = dh_new * (1.0 - act_t * act_t)
      dh_prev = dz @ w_hh_t
    elif cell == "rnn_relu":
      dz = jnp.where(act_t > 0, dh_new, 0.0)
      dh_prev = dz @ w_hh_t
    elif is_lstm:
      i, f, g, o = jnp.split(act_t, 4, axis=-1)
      if m_t is not None:
        dc_new = jnp.where(m_t, dc, 0.0)
        dc_skip = jnp.where(m_t, 0.0, dc)
      else:
        dc_new = dc
      tc = jnp.tanh(c_t)  # masked steps have c_t = c_{t-1}, but zero gradients there
      dc_new = dc_new + dh_new * o * (1.0 - tc * tc)
      dz = jnp.concatenate([dc_new * g * i * (1.0 - i),
                            dc_new * c_prev_t * f * (1.0 - f),
                            dc_new * i * (1.0 - g * g),
                            dh_new * tc * o * (1.0 - o)], axis=-1)
      dh_prev = dz @ w_hh_t
      dc_prev = dc_new * f
      if m_t is not None:
        dc_prev = dc_prev + dc_skip
    else:
      r, z, n = jnp.split(act_t, 3, axis=-1)
      dn = dh_new * (1.0 - z) * (1.0 - n * n)
      dr = dn * hn_t * r * (1.0 - r)
      dzg = dh_new * (h_prev_t - n) * z * (1.0 - z)
      dz = jnp.concatenate([dr, dzg, dn], axis=-1)
      dhw = jnp.concatenate([dr, dzg, dn * r], axis=-1)
      dh_prev = dh_new * z + dhw @ w_hh_t
    if m_t is not None:
      dh_prev = dh_prev + dh_skip
    carry = (dh_prev, dc_prev, c_prev_t) if is_lstm else dh_prev
    return carry, dz, (dhw,)

  init = (d_final[0], d_final[1], final_c) if is_lstm else d_final
  dhw_shape = jax.ShapeDtypeStruct(h0.shape[:1] + act.shape[-1:], act.dtype) if is_gru else None
  d_carry, dxw, (dhw,) = _time_loop(step, init, act, (dhw_shape,), axis=axis, reverse=True,
                                    rewrite=True, unroll=unroll)
  if dhw is None:
    dhw = dxw
  d_carry = (d_carry[0], d_carry[1]) if is_lstm else d_carry

  d_w_hh = _weight_grad(h_prev, dhw)
  d_b_x = dxw.sum(axis=(0, 1))
  d_b_ih = None if b_ih is None else d_b_x
  if b_hh is not None:
    d_b_hh = dhw.sum(axis=(0, 1)) if is_gru else d_b_x
  else:
    d_b_hh = None
  d_x, d_w_ih = _input_grads(x, w_ih, dxw)
  return d_x, d_w_ih, d_b_ih, d_w_hh, d_b_hh, d_carry, None


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _previous_states(h0: jax.Array, outputs: jax.Array, axis: int) -> jax.Array:
  """h_{t-1} of every step: `h0`, then the outputs but the last, along `axis`."""
  return jnp.concatenate(
      [jnp.expand_dims(h0, axis),
       jax.lax.slice_in_dim(outputs, 0, outputs.shape[axis] - 1, axis=axis)], axis=axis)


def _weight_grad(inputs: jax.Array, d: jax.Array) -> jax.Array:
  """Sum over time and batch of `inputs^T d`, as one matmul."""
  rows = inputs.shape[0] * inputs.shape[1]
  return inputs.reshape(rows, -1).T @ d.reshape(rows, -1)


def _input_grads(x: jax.Array, w_ih: jax.Array | None, dxw: jax.Array):
  """`(dx, dW_ih)` from the gradient of the input projection (`x` is it if `w_ih` is None)."""
  if w_ih is None:
    return dxw, None
  return dxw @ w_ih.T, _weight_grad(x, dxw)


# --- LSTM and GRU layers through the fused CPU kernels (cpu_kernels.py) -------------------

def _gru_kernel_bias(b_ih, b_hh, hidden: int, dtype) -> jax.Array:
  """The GRU kernel's bias `[b_ir + b_hr, b_iz + b_hz, b_in, b_hn]` (zeros for None)."""
  zeros = jnp.zeros((3 * hidden,), dtype)
  b_ih, b_hh = (zeros if b is None else b for b in (b_ih, b_hh))
  return jnp.concatenate([b_ih[:2 * hidden] + b_hh[:2 * hidden], b_ih[2 * hidden:],
                          b_hh[2 * hidden:]])


def _fused_forward(cell: CellKind, axis: int, save: bool, x, w_ih, b_ih, w_hh, b_hh, carry):
  """`((outputs, final carry), residuals)` from the cell's forward kernel."""
  last = functools.partial(jax.lax.index_in_dim, index=x.shape[axis] - 1, axis=axis,
                           keepdims=False)
  # The kernels multiply each step's x by W_ih themselves (no projection of all steps first).
  if cell == "lstm":
    b_x, _ = _split_biases("lstm", b_ih, b_hh)
    if b_x is None:
      b_x = jnp.zeros(w_hh.shape[-1:], x.dtype)
    hs, cs, act = cpu_kernels.lstm_forward(axis, save, x, w_ih, b_x, w_hh, *carry)
    return (hs, (last(hs), last(cs))), (hs, cs, act)
  bias = _gru_kernel_bias(b_ih, b_hh, w_hh.shape[0], x.dtype)
  hs, act = cpu_kernels.gru_forward(axis, save, x, w_ih, bias, w_hh, carry)
  return (hs, last(hs)), (hs, act)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(cell: CellKind, axis: int, x, w_ih, b_ih, w_hh, b_hh, carry):
  """`recurrent_layer` for an LSTM or GRU without a mask, through the fused CPU kernels."""
  out, _ = _fused_forward(cell, axis, False, x, w_ih, b_ih, w_hh, b_hh, carry)
  return out


def _fused_fwd(cell: CellKind, axis: int, x, w_ih, b_ih, w_hh, b_hh, carry):
  out, saved = _fused_forward(cell, axis, True, x, w_ih, b_ih, w_hh, b_hh, carry)
  return out, (x, w_ih, b_ih, w_hh, b_hh, carry, saved)


def _fused_bwd(cell: CellKind, axis: int, residuals, cotangents):
  """The kernel's reverse loop gives the gates' pre-activation gradients and
  `x`'s gradient; the weight gradients then come from `cpu_kernels.weight_grads`
  over all steps (an LSTM's two in one pass over `dz`)."""
  x, w_ih, b_ih, w_hh, b_hh, carry, saved = residuals
  d_hs, d_final = cotangents
  hidden = w_hh.shape[0]
  if cell == "lstm":
    (h0, c0), (hs, cs, act) = carry, saved
    dxw, d_h0, d_c0, d_b_rows, d_x = cpu_kernels.lstm_backward(axis, act, cs, c0, w_ih, w_hh,
                                                               d_hs, *d_final)
    dhw, d_carry = dxw, (d_h0, d_c0)
    d_b_ih = d_b_hh = d_b_rows.sum(axis=0)
  else:
    h0, (hs, act) = carry, saved
    dxw, dhw, d_carry, d_b_rows, d_x = cpu_kernels.gru_backward(axis, act, hs, h0, w_ih, w_hh,
                                                                d_hs, d_final)
    sums = d_b_rows.sum(axis=0)  # [dr, dz, dn, dn r]
    d_b_ih = sums[:3 * hidden]
    d_b_hh = jnp.concatenate([sums[:2 * hidden], sums[3 * hidden:]])
  if d_x is None:  # not from the kernel
    d_x = dxw if w_ih is None else dxw @ w_ih.T
  # The GEMM kernel fits wherever the recurrence's did (`cpu_kernels.applies`).
  x_in = None if w_ih is None else x
  if cell == "lstm":  # one pass over dz for both
    d_w_ih, d_w_hh = cpu_kernels.weight_grads(axis, x_in, hs, h0, dhw)
  else:
    d_w_ih = None if x_in is None else cpu_kernels.weight_grads(axis, x_in, None, None, dxw)[0]
    d_w_hh = cpu_kernels.weight_grads(axis, None, hs, h0, dhw)[1]
  return (d_x, d_w_ih, None if b_ih is None else d_b_ih, d_w_hh,
          None if b_hh is None else d_b_hh, d_carry)


_fused.defvjp(_fused_fwd, _fused_bwd)


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
    cell: "rnn" (tanh), "rnn_relu", "lstm" or "gru".
    hidden_size: units per layer and direction.
    num_layers: stacked layers.
    bidirectional: run a reverse direction per layer and concatenate.
    dropout_rate: dropout on the outputs of every layer but the last (as
      PyTorch's `dropout`); active only when `deterministic=False`.
    kernel_init / bias_init: None means PyTorch's U(-1/sqrt(H), 1/sqrt(H)).
    unroll: `lax.scan` unroll factor.
    fused_cpu_kernel: run LSTM and GRU layers without `lengths` through the
      fused CPU kernels where they apply (see `recurrent_layer`); speed only.
  """

  cell: CellKind
  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  kernel_init: Initializer | None = None
  bias_init: Initializer | None = None
  unroll: int = 1
  fused_cpu_kernel: bool = True

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
               initial_carry: Carry | None = None, deterministic: bool = True, *,
               embedding: jax.Array | None = None):
    """Runs the stack.

    Args:
      inputs: `<float32>[batch, time, features]`, or with `embedding`
        `<int32>[batch, time]` ids into it.
      lengths: `<int32>[batch]` valid steps per example, or None for all.
      initial_carry: as returned by `initialize_carry`, or None for zeros.
      deterministic: disables dropout when True.
      embedding: `<float32>[vocab, features]`, the table `inputs` index. The
        first layer's input projection `embedding[ids] W_ih` is then, where
        the vocabulary has fewer entries than `inputs` has steps in all, a row
        gather from `embedding W_ih` (one product per entry, not per step; the
        same numbers, and its gradient a scatter-add). A char model's first
        layer thus skips its largest matmuls, forward and backward.

    Returns:
      `(outputs, final_carry)`: the top layer's `<float32>[batch, time,
      directions * hidden]` (zero past each length) and the carry after each
      example's last valid step.
    """
    if self.cell not in NUM_GATES:
      raise ValueError(f"unknown cell {self.cell!r}; expected one of {sorted(NUM_GATES)}")
    batch_size, num_steps = inputs.shape[:2]
    dtype = inputs.dtype if embedding is None else embedding.dtype
    gates = NUM_GATES[self.cell]
    kernel_init = self.kernel_init or torch_default_init(self.hidden_size)
    bias_init = self.bias_init or torch_default_init(self.hidden_size)
    if initial_carry is None:
      initial_carry = self.initialize_carry(batch_size, dtype)
    # With an embedding, `x` holds ids until the first layer has projected them.
    fold = embedding is not None and embedding.shape[0] < batch_size * num_steps
    if embedding is not None and not fold:
      inputs = jnp.take(embedding, inputs, axis=0)
    mask = None
    if lengths is not None:
      lengths = _checked_lengths(lengths, num_steps)
      mask = (jnp.arange(num_steps)[None, :] < lengths[:, None])[..., None]  # [B, T, 1]

    x = inputs  # batch-major throughout: [B, T, F]
    final_carry = []
    for layer in range(self.num_layers):
      folded = fold and layer == 0
      in_features = embedding.shape[1] if folded else x.shape[-1]
      outputs = []
      for direction in range(self.num_directions):
        name = f"l{layer}" + ("_reverse" if direction else "")
        w = _LayerWeights(in_features, self.hidden_size, gates, kernel_init, bias_init,
                          dtype, name=name)()
        x_dir = reverse_within_lengths(x, lengths, time_axis=1) if direction else x
        w_ih = w["w_ih"]
        if folded:  # x_dir holds ids: their projections are rows of embedding @ W_ih
          x_dir, w_ih = jnp.take(embedding @ w_ih, x_dir, axis=0), None
        carry = initial_carry[layer * self.num_directions + direction]
        out, carry = recurrent_layer(self.cell, x_dir, w_ih, w["b_ih"], w["w_hh"],
                                     w["b_hh"], carry, mask, self.unroll, time_axis=1,
                                     fused=self.fused_cpu_kernel)
        outputs.append(reverse_within_lengths(out, lengths, time_axis=1) if direction else out)
        final_carry.append(carry)
      x = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
      if self.dropout_rate > 0 and layer < self.num_layers - 1:
        # Drawn time-major, as before the layers went batch-major, so that a
        # given dropout key drops the same units.
        x = jnp.swapaxes(x, 0, 1)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = jnp.swapaxes(x, 0, 1)
    return x, tuple(final_carry)


def _checked_lengths(lengths: jax.Array, num_steps: int) -> jax.Array:
  """`lengths`, refused if a known value lies outside [0, num_steps].

  Under `jit` the values are unknown; they are clipped to [0, num_steps] so an
  out-of-range length can never index past the sequence (a length beyond the
  time axis then means "all of it").
  """
  if not isinstance(lengths, jax.core.Tracer):
    values = np.asarray(lengths)
    bad = values[(values < 0) | (values > num_steps)]
    if bad.size:
      raise ValueError(f"lengths must lie in [0, {num_steps}] (the inputs' time steps); "
                       f"got {sorted(set(bad.tolist()))[:5]}")
  return jnp.clip(lengths, 0, num_steps)


def from_torch(state_dict: Mapping[str, Any], cell: CellKind, num_layers: int,
               bidirectional: bool = False) -> tuple[Recurrent, dict]:
  """Builds a `Recurrent` and its params from a PyTorch nn.LSTM/GRU/RNN state dict.

  Args:
    state_dict: numpy arrays (or anything `np.asarray` accepts) under
      PyTorch's names: `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
      `bias_hh_l{k}`, plus the `_reverse` variants when bidirectional.
    cell: "lstm", "gru", "rnn" (`nn.RNN`, tanh) or "rnn_relu" (`nn.RNN` with
      `nonlinearity="relu"`; a state dict does not record the nonlinearity).
    num_layers: the PyTorch module's `num_layers`.
    bidirectional: the PyTorch module's `bidirectional`.

  Returns:
    `(module, params)` with `module.apply({"params": params}, x)` equal to
    the PyTorch module with `batch_first=True`.
  """
  if cell not in NUM_GATES:
    raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(NUM_GATES)}")
  gates = NUM_GATES[cell]
  what = f"{num_layers}-layer {'bidirectional ' if bidirectional else ''}{cell}"
  if "weight_hh_l0" not in state_dict:
    raise ValueError(f"state dict lacks ['weight_hh_l0'] for a {what}")
  w_hh0 = np.asarray(state_dict["weight_hh_l0"])
  hidden_size = w_hh0.shape[1]
  if w_hh0.shape[0] != gates * hidden_size:
    raise ValueError(f"weight_hh_l0 has shape {w_hh0.shape}, which is not a {cell} "
                     f"layer (expected [{gates} * hidden, hidden])")
  suffixes = ("", "_reverse") if bidirectional else ("",)
  expected = {f"{n}_l{layer}{suffix}" for layer in range(num_layers) for suffix in suffixes
              for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
  extra = sorted(set(state_dict) - expected)
  if extra:
    raise ValueError(f"state dict has keys {extra} that a {what} does not use "
                     "(projections via proj_size are not supported)")
  params = {}
  width = gates * hidden_size
  in_features = np.asarray(state_dict.get("weight_ih_l0", np.zeros((0, 0)))).shape[-1]
  for layer in range(num_layers):
    for suffix in suffixes:
      key = f"l{layer}{suffix}"
      names = {n: f"{n}_l{layer}{suffix}"
               for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
      missing = [v for v in names.values() if v not in state_dict]
      if missing:
        raise ValueError(f"state dict lacks {missing} for a {what}")
      layer_in = in_features if layer == 0 else hidden_size * (2 if bidirectional else 1)
      shapes = {"weight_ih": (width, layer_in), "weight_hh": (width, hidden_size),
                "bias_ih": (width,), "bias_hh": (width,)}
      for n, shape in shapes.items():
        got = np.shape(state_dict[names[n]])
        if got != shape:
          raise ValueError(f"{names[n]} has shape {got}; a {what} with hidden size "
                           f"{hidden_size} and {in_features} input features needs {shape}")
      params[key] = {
          "w_ih": jnp.asarray(np.asarray(state_dict[names["weight_ih"]]).T),
          "w_hh": jnp.asarray(np.asarray(state_dict[names["weight_hh"]]).T),
          "b_ih": jnp.asarray(np.asarray(state_dict[names["bias_ih"]])),
          "b_hh": jnp.asarray(np.asarray(state_dict[names["bias_hh"]])),
      }
  module = Recurrent(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                     bidirectional=bidirectional)
  return module, params


class Cell(nn.Module):
  """One RNN/LSTM/GRU step with PyTorch's gate math, for step-by-step decoders.

  `__call__(x <float32>[batch, features], carry) -> new carry`, where the carry
  is `h` (RNN/GRU) or `(h, c)` (LSTM), each `<float32>[batch, hidden_size]`.
  Parameters are laid out as one layer of `Recurrent` (`w_ih`, `w_hh`, `b_ih`,
  `b_hh`), with PyTorch's default init unless given.
  """

  cell: CellKind
  hidden_size: int
  kernel_init: Initializer | None = None
  bias_init: Initializer | None = None

  def zero_carry(self, batch_size: int, dtype=jnp.float32):
    zeros = jnp.zeros((batch_size, self.hidden_size), dtype)
    return (zeros, zeros) if self.cell == "lstm" else zeros

  @nn.compact
  def __call__(self, x: jax.Array, carry):
    weights = _LayerWeights(
        x.shape[-1], self.hidden_size, NUM_GATES[self.cell],
        self.kernel_init or torch_default_init(self.hidden_size),
        self.bias_init or torch_default_init(self.hidden_size), name="weights")()
    return cell_step(self.cell, weights, x, carry)
