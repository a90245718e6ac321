"""Tests for mmzoo.nn.recurrent: PyTorch parity, gradients, carries, lengths, dropout.

The PyTorch parity tests run both sides in float64 (jax's x64 mode is switched on
only inside the `x64` fixture and restored afterwards), so that a 1e-5 tolerance
on outputs, final states and gradients is a real check and not float32 noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmzoo.nn.recurrent import NUM_GATES, Recurrent, cell_step, from_torch

CELLS = ("rnn", "lstm", "gru")
TOL = {"rtol": 1e-5, "atol": 1e-5}

B, T, F, H = 4, 6, 3, 5
LENGTHS = np.array([6, 3, 1, 5])  # one full-length example, one of length 1


@pytest.fixture
def x64():
  """Enables float64 in jax for one test and restores the previous setting."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def torch():
  return pytest.importorskip(
    "torch", reason="torch is not importable; the PyTorch parity tests need it"
  )


def _carry_h(carry, cell):
  """Stacks the h of every layer*direction into [L*D, B, H], like torch's h_n."""
  return jnp.stack([c[0] if cell == "lstm" else c for c in carry])


def _carry_c(carry):
  return jnp.stack([c[1] for c in carry])


def _to_carry(h0, c0, cell):
  """torch's h0 ([L*D, B, H]) and c0 to a mmzoo carry tuple."""
  if cell == "lstm":
    return tuple((jnp.asarray(h), jnp.asarray(c)) for h, c in zip(h0, c0, strict=True))
  return tuple(jnp.asarray(h) for h in h0)


def _torch_module(torch, cell, num_layers, bidirectional, dtype):
  cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
  return cls(
    F, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, dtype=dtype
  )


def _numpy_state_dict(tmod):
  return {k: v.detach().cpu().numpy() for k, v in tmod.state_dict().items()}


# ----------------------------------------------------------------------------
# 1. Parity with PyTorch through from_torch.


@pytest.mark.parametrize("mode", ["plain", "lengths", "init", "lengths+init"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_parity(torch, x64, cell, num_layers, bidirectional, mode):
  from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

  use_lengths = "lengths" in mode
  use_init = "init" in mode
  seed = 1000 * CELLS.index(cell) + 100 * num_layers + 10 * bidirectional + len(mode)
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  nd = 2 if bidirectional else 1
  is_lstm = cell == "lstm"

  tmod = _torch_module(torch, cell, num_layers, bidirectional, torch.float64)
  module, params = from_torch(_numpy_state_dict(tmod), cell, num_layers, bidirectional)
  assert module.hidden_size == H and module.num_layers == num_layers
  assert module.bidirectional == bidirectional

  x_np = rng.normal(size=(B, T, F))
  h0_np = rng.normal(size=(num_layers * nd, B, H)) if use_init else None
  c0_np = rng.normal(size=(num_layers * nd, B, H)) if use_init and is_lstm else None
  w_out = rng.normal(size=(B, T, nd * H))
  w_h = rng.normal(size=(num_layers * nd, B, H))
  w_c = rng.normal(size=(num_layers * nd, B, H))

  # PyTorch.
  x_t = torch.tensor(x_np, requires_grad=True)
  inp = x_t
  if use_lengths:
    inp = pack_padded_sequence(x_t, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
  hx = None
  if use_init:
    h0_t = torch.tensor(h0_np, requires_grad=True)
    c0_t = torch.tensor(c0_np, requires_grad=True) if is_lstm else None
    hx = (h0_t, c0_t) if is_lstm else h0_t
  out_t, hn = tmod(inp, hx)
  if use_lengths:
    out_t, _ = pad_packed_sequence(out_t, batch_first=True, total_length=T)
  h_n, c_n = hn if is_lstm else (hn, None)
  loss_t = (out_t * torch.tensor(w_out)).sum() + (h_n * torch.tensor(w_h)).sum()
  if is_lstm:
    loss_t = loss_t + (c_n * torch.tensor(w_c)).sum()
  loss_t.backward()

  # mmzoo.
  lengths = jnp.asarray(LENGTHS) if use_lengths else None

  def loss_fn(params, x, carry):
    out, final = module.apply({"params": params}, x, lengths=lengths, initial_carry=carry)
    h = _carry_h(final, cell)
    loss = jnp.sum(out * w_out) + jnp.sum(h * w_h)
    c = None
    if is_lstm:
      c = _carry_c(final)
      loss = loss + jnp.sum(c * w_c)
    return loss, (out, h, c)

  carry0 = _to_carry(h0_np, c0_np, cell) if use_init else None
  (loss_j, (out_j, h_j, c_j)), (g_params, g_x, g_carry) = jax.value_and_grad(
    loss_fn, argnums=(0, 1, 2), has_aux=True
  )(params, jnp.asarray(x_np), carry0)
  assert out_j.dtype == jnp.float64

  np.testing.assert_allclose(out_j, out_t.detach().numpy(), **TOL)
  np.testing.assert_allclose(h_j, h_n.detach().numpy(), **TOL)
  if is_lstm:
    np.testing.assert_allclose(c_j, c_n.detach().numpy(), **TOL)
  np.testing.assert_allclose(loss_j, loss_t.item(), **TOL)
  if use_lengths:
    for b, length in enumerate(LENGTHS):
      assert np.all(np.asarray(out_j)[b, length:] == 0.0), f"example {b} not zero past its length"

  np.testing.assert_allclose(g_x, x_t.grad.numpy(), **TOL)
  if use_init:
    g_h0 = _carry_h(g_carry, cell)
    np.testing.assert_allclose(g_h0, h0_t.grad.numpy(), **TOL)
    if is_lstm:
      np.testing.assert_allclose(_carry_c(g_carry), c0_t.grad.numpy(), **TOL)

  tparams = dict(tmod.named_parameters())
  assert len(tparams) == 4 * num_layers * nd
  for layer in range(num_layers):
    for suffix in ("", "_reverse") if bidirectional else ("",):
      g = g_params[f"l{layer}{suffix}"]
      for ours, theirs, transpose in [
        ("w_ih", "weight_ih", True),
        ("w_hh", "weight_hh", True),
        ("b_ih", "bias_ih", False),
        ("b_hh", "bias_hh", False),
      ]:
        expected = tparams[f"{theirs}_l{layer}{suffix}"].grad.numpy()
        np.testing.assert_allclose(
          g[ours],
          expected.T if transpose else expected,
          **TOL,
          err_msg=f"d loss / d {theirs}_l{layer}{suffix}",
        )


@pytest.mark.parametrize("cell", CELLS)
def test_torch_parity_float32(torch, cell):
  """The default float32 path: a 2-layer bidirectional stack with lengths."""
  from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

  torch.manual_seed(7)
  x_np = np.random.default_rng(7).normal(size=(B, T, F)).astype(np.float32)
  tmod = _torch_module(torch, cell, 2, True, torch.float32)
  module, params = from_torch(_numpy_state_dict(tmod), cell, 2, True)
  packed = pack_padded_sequence(
    torch.tensor(x_np), torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False
  )
  with torch.no_grad():
    out_t, hn = tmod(packed)
  out_t, _ = pad_packed_sequence(out_t, batch_first=True, total_length=T)
  h_n = hn[0] if cell == "lstm" else hn

  out_j, final = module.apply({"params": params}, jnp.asarray(x_np), lengths=jnp.asarray(LENGTHS))
  assert out_j.dtype == jnp.float32
  np.testing.assert_allclose(out_j, out_t.numpy(), **TOL)
  np.testing.assert_allclose(_carry_h(final, cell), h_n.numpy(), **TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_cell_step_matches_torch_cell(torch, x64, cell):
  """cell_step against torch.nn.{RNN,LSTM,GRU}Cell, one step from a nonzero state."""
  torch.manual_seed(3)
  rng = np.random.default_rng(3)
  cls = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell]
  tcell = cls(F, H, dtype=torch.float64)
  sd = _numpy_state_dict(tcell)
  params = {
    "w_ih": jnp.asarray(sd["weight_ih"].T),
    "w_hh": jnp.asarray(sd["weight_hh"].T),
    "b_ih": jnp.asarray(sd["bias_ih"]),
    "b_hh": jnp.asarray(sd["bias_hh"]),
  }
  x = rng.normal(size=(B, F))
  h = rng.normal(size=(B, H))
  c = rng.normal(size=(B, H))
  with torch.no_grad():
    if cell == "lstm":
      h_t, c_t = tcell(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
      h_j, c_j = cell_step(cell, params, jnp.asarray(x), (jnp.asarray(h), jnp.asarray(c)))
      np.testing.assert_allclose(c_j, c_t.numpy(), **TOL)
    else:
      h_t = tcell(torch.tensor(x), torch.tensor(h))
      h_j = cell_step(cell, params, jnp.asarray(x), jnp.asarray(h))
  np.testing.assert_allclose(h_j, h_t.numpy(), **TOL)


# ----------------------------------------------------------------------------
# 2. Finite-difference gradient check of each cell.


def _random_cell_params(rng, cell, features, hidden):
  g = NUM_GATES[cell] * hidden
  return {
    "w_ih": rng.normal(size=(features, g)) * 0.5,
    "w_hh": rng.normal(size=(hidden, g)) * 0.5,
    "b_ih": rng.normal(size=(g,)) * 0.5,
    "b_hh": rng.normal(size=(g,)) * 0.5,
  }


@pytest.mark.parametrize("cell", CELLS)
def test_cell_step_finite_differences(x64, cell):
  rng = np.random.default_rng(11 + CELLS.index(cell))
  batch, features, hidden = 2, 3, 4
  is_lstm = cell == "lstm"
  params = _random_cell_params(rng, cell, features, hidden)
  inputs = {
    "x": rng.normal(size=(batch, features)),
    "h": rng.normal(size=(batch, hidden)),
    "c": rng.normal(size=(batch, hidden)),
  }
  w_h = rng.normal(size=(batch, hidden))
  w_c = rng.normal(size=(batch, hidden))

  def loss(params, inputs):
    carry = (inputs["h"], inputs["c"]) if is_lstm else inputs["h"]
    new = cell_step(cell, params, inputs["x"], carry)
    if is_lstm:
      return jnp.sum(new[0] * w_h) + jnp.sum(new[1] * w_c)
    return jnp.sum(new * w_h)

  as_jnp = lambda tree: jax.tree.map(jnp.asarray, tree)
  g_params, g_inputs = jax.grad(loss, argnums=(0, 1))(as_jnp(params), as_jnp(inputs))
  loss_jit = jax.jit(loss)
  eps = 1e-6

  def check(tree, grads, name, num_entries=4):
    arr = tree[name]
    for flat in rng.choice(arr.size, size=min(num_entries, arr.size), replace=False):
      idx = np.unravel_index(flat, arr.shape)
      plus, minus = arr.copy(), arr.copy()
      plus[idx] += eps
      minus[idx] -= eps
      f_plus = loss_jit(*as_jnp(_swap(tree, name, plus)))
      f_minus = loss_jit(*as_jnp(_swap(tree, name, minus)))
      numeric = (float(f_plus) - float(f_minus)) / (2 * eps)
      analytic = float(grads[name][idx])
      assert abs(numeric - analytic) <= 1e-6 * (1 + abs(analytic)), (
        f"{cell} d/d{name}{idx}: finite difference {numeric} vs jax.grad {analytic}"
      )

  def _swap(tree, name, value):
    new = dict(tree, **{name: value})
    return (new, inputs) if tree is params else (params, new)

  for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
    check(params, g_params, name)
  for name in ("x", "h") + (("c",) if is_lstm else ()):
    check(inputs, g_inputs, name)
  if not is_lstm:
    assert np.all(np.asarray(g_inputs["c"]) == 0.0)  # c is not an input of rnn/gru


# ----------------------------------------------------------------------------
# Helpers for the module-level tests below (no torch needed).


def _init(module, x, seed=0):
  return module.init(jax.random.key(seed), x)["params"]


@pytest.mark.parametrize("cell", CELLS)
def test_module_matches_cell_step_loop(cell):
  """The scanned stack equals looping cell_step over time, layer by layer."""
  module = Recurrent(cell=cell, hidden_size=H, num_layers=2)
  x = jax.random.normal(jax.random.key(1), (B, T, F))
  params = _init(module, x)
  carry0 = jax.tree.map(
    lambda z: jax.random.normal(jax.random.key(2), z.shape), module.initialize_carry(B)
  )
  out, final = module.apply({"params": params}, x, initial_carry=carry0)

  layer_in = x
  for layer in range(2):
    carry = carry0[layer]
    outs = []
    for t in range(T):
      carry = cell_step(cell, params[f"l{layer}"], layer_in[:, t], carry)
      outs.append(carry[0] if cell == "lstm" else carry)
    layer_in = jnp.stack(outs, axis=1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), final[layer], carry)
  np.testing.assert_allclose(out, layer_in, **TOL)


# ----------------------------------------------------------------------------
# 3. Truncated BPTT: carrying the final state across chunks.


@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_state_carry(cell):
  module = Recurrent(cell=cell, hidden_size=H, num_layers=2)
  x = jax.random.normal(jax.random.key(CELLS.index(cell)), (B, 2 * T, F))
  params = _init(module, x)
  apply = lambda *a, **k: module.apply({"params": params}, *a, **k)

  out_full, carry_full = apply(x)
  out_a, carry_a = apply(x[:, :T])
  out_b, carry_b = apply(x[:, T:], initial_carry=carry_a)

  assert len(carry_full) == 2
  np.testing.assert_allclose(jnp.concatenate([out_a, out_b], axis=1), out_full, **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), carry_b, carry_full)
  # The second chunk really depends on the carry: starting it from zeros differs.
  out_b0, _ = apply(x[:, T:])
  assert np.max(np.abs(out_b0 - out_b)) > 1e-3


# ----------------------------------------------------------------------------
# 4. Lengths: the final carry is the state after each example's last valid step.


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_final_carry(cell, bidirectional):
  module = Recurrent(cell=cell, hidden_size=H, num_layers=2, bidirectional=bidirectional)
  k1, k2 = jax.random.split(jax.random.key(5 + CELLS.index(cell)))
  x = jax.random.normal(k1, (B, T, F))
  # Garbage of a different scale past each length: it must have no effect.
  pad = (jnp.arange(T)[None, :, None] >= jnp.asarray(LENGTHS)[:, None, None]).astype(x.dtype)
  x = x + pad * 50.0 * jax.random.normal(k2, x.shape)
  params = _init(module, x)
  out, final = module.apply({"params": params}, x, lengths=jnp.asarray(LENGTHS))

  for b, length in enumerate(LENGTHS):
    out_b, final_b = module.apply({"params": params}, x[b : b + 1, :length])
    np.testing.assert_allclose(out[b : b + 1, :length], out_b, **TOL)
    assert np.all(np.asarray(out)[b, length:] == 0.0)
    ours = jax.tree.map(lambda a, b=b: a[b : b + 1], final)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **TOL), ours, final_b)


# ----------------------------------------------------------------------------
# 5. Dropout between layers (PyTorch semantics: none after the last layer).


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_dropout_between_layers(bidirectional):
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  make = lambda layers, rate: Recurrent(
    cell="lstm", hidden_size=H, num_layers=layers, bidirectional=bidirectional, dropout_rate=rate
  )
  rngs = {"dropout": jax.random.key(42)}
  nd = 2 if bidirectional else 1

  # Two layers.
  params = _init(make(2, 0.0), x)
  variables = {"params": params}
  out_ref, carry_ref = make(2, 0.0).apply(variables, x)
  out_det, carry_det = make(2, 0.5).apply(variables, x, deterministic=True)
  np.testing.assert_array_equal(out_det, out_ref)
  jax.tree.map(np.testing.assert_array_equal, carry_det, carry_ref)

  out_drop, carry_drop = make(2, 0.5).apply(variables, x, deterministic=False, rngs=rngs)
  assert np.max(np.abs(out_drop - out_ref)) > 1e-3, "dropout did not change a 2-layer stack"
  # Layer 0 runs before any dropout; layer 1 sees dropped-out inputs.
  jax.tree.map(np.testing.assert_array_equal, carry_drop[:nd], carry_ref[:nd])
  assert all(
    np.max(np.abs(a - b)) > 1e-3
    for a, b in zip(
      jax.tree.leaves(carry_drop[nd:]), jax.tree.leaves(carry_ref[nd:]), strict=True
    )
  )
  # A different dropout rng gives a different result.
  out_drop2, _ = make(2, 0.5).apply(
    variables, x, deterministic=False, rngs={"dropout": jax.random.key(43)}
  )
  assert np.max(np.abs(out_drop2 - out_drop)) > 1e-3

  # One layer: nothing to drop between layers.
  params1 = {"params": _init(make(1, 0.0), x)}
  out1_ref, carry1_ref = make(1, 0.0).apply(params1, x)
  out1_drop, carry1_drop = make(1, 0.5).apply(params1, x, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(out1_drop, out1_ref)
  jax.tree.map(np.testing.assert_array_equal, carry1_drop, carry1_ref)


# ----------------------------------------------------------------------------
# 6. from_torch input validation (plain numpy state dicts; torch not needed).


def _fake_state_dict(cell, num_layers, bidirectional, hidden=H, features=F):
  rng = np.random.default_rng(0)
  g = NUM_GATES[cell] * hidden
  nd = 2 if bidirectional else 1
  sd = {}
  for layer in range(num_layers):
    in_f = features if layer == 0 else nd * hidden
    for suffix in ("", "_reverse") if bidirectional else ("",):
      sd[f"weight_ih_l{layer}{suffix}"] = rng.normal(size=(g, in_f)).astype(np.float32)
      sd[f"weight_hh_l{layer}{suffix}"] = rng.normal(size=(g, hidden)).astype(np.float32)
      sd[f"bias_ih_l{layer}{suffix}"] = rng.normal(size=(g,)).astype(np.float32)
      sd[f"bias_hh_l{layer}{suffix}"] = rng.normal(size=(g,)).astype(np.float32)
  return sd


def test_from_torch_accepts_well_formed_state_dict():
  sd = _fake_state_dict("gru", 2, True)
  module, params = from_torch(sd, "gru", 2, bidirectional=True)
  assert sorted(params) == ["l0", "l0_reverse", "l1", "l1_reverse"]
  np.testing.assert_array_equal(params["l1_reverse"]["w_ih"], sd["weight_ih_l1_reverse"].T)
  np.testing.assert_array_equal(params["l0"]["b_hh"], sd["bias_hh_l0"])
  out, carry = module.apply({"params": params}, jnp.zeros((2, 3, F)))
  assert out.shape == (2, 3, 2 * H) and len(carry) == 4


@pytest.mark.parametrize(
  "key", ["weight_ih_l0", "bias_ih_l0", "bias_hh_l1", "weight_hh_l1", "weight_ih_l1_reverse"]
)
def test_from_torch_missing_key(key):
  sd = _fake_state_dict("lstm", 2, True)
  del sd[key]
  with pytest.raises(ValueError, match=key):
    from_torch(sd, "lstm", 2, bidirectional=True)


@pytest.mark.xfail(
  strict=True,
  raises=KeyError,
  reason="BUG: from_torch reads state_dict['weight_hh_l0'] before its missing-key check, "
  "so a dict without it raises a bare KeyError instead of a ValueError",
)
def test_from_torch_missing_weight_hh_l0():
  sd = _fake_state_dict("lstm", 1, False)
  del sd["weight_hh_l0"]
  with pytest.raises(ValueError, match="weight_hh_l0"):
    from_torch(sd, "lstm", 1)


def test_from_torch_unidirectional_dict_as_bidirectional():
  with pytest.raises(ValueError, match=r"weight_ih_l0_reverse"):
    from_torch(_fake_state_dict("rnn", 1, False), "rnn", 1, bidirectional=True)


@pytest.mark.parametrize(
  "sd_cell,cell", [("gru", "lstm"), ("lstm", "gru"), ("rnn", "lstm"), ("lstm", "rnn")]
)
def test_from_torch_wrong_cell_shape(sd_cell, cell):
  with pytest.raises(ValueError, match=rf"weight_hh_l0 has shape .*not a {cell} layer"):
    from_torch(_fake_state_dict(sd_cell, 1, False), cell, 1)


@pytest.mark.parametrize(
  "num_layers,bidirectional,extra",
  [(1, True, "weight_ih_l1"), (2, False, "weight_ih_l0_reverse")],
)
def test_from_torch_extra_keys(num_layers, bidirectional, extra):
  sd = _fake_state_dict("gru", 2, True)
  with pytest.raises(ValueError, match=extra):
    from_torch(sd, "gru", num_layers, bidirectional=bidirectional)


def test_from_torch_unknown_cell():
  with pytest.raises(ValueError, match="unknown cell 'elman'"):
    from_torch(_fake_state_dict("rnn", 1, False), "elman", 1)
