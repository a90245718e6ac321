"""Tests for mmzoo.nn.recurrent: PyTorch parity, gradients, carries, lengths, dropout.

The PyTorch parity tests run both sides in float64 (jax's x64 mode is switched on
only inside the `x64` fixture and restored afterwards), so that a 1e-5 tolerance
on outputs, final states and gradients is a real check and not float32 noise.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from mmzoo.nn.recurrent import NUM_GATES, Recurrent, cell_step, from_torch

CELLS = ("rnn", "rnn_relu", "lstm", "gru")
TOL = {"rtol": 1e-5, "atol": 1e-5}

B, T, F, H = 4, 6, 3, 5
LENGTHS = np.array([6, 3, 1, 5])  # one full-length example, one of length 1


# For the float64 tests: LLVM -O0 takes a third less compile time, and the HLO (so the
# math) is the same.
jit_o0 = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture
def x64():
  """Enables float64 in jax for one test and restores the previous setting."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def torch():
  torch = pytest.importorskip(
    "torch", reason="torch is not importable; the PyTorch parity tests need it"
  )
  # Tiny tensors: intra-op threads only spin against jax's (100x slower on 2 cores).
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield torch
  torch.set_num_threads(threads)


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
  cls = {"rnn": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "lstm": torch.nn.LSTM,
         "gru": torch.nn.GRU}[cell]
  kwargs = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
  return cls(
    F, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, dtype=dtype,
    **kwargs
  )


def _numpy_state_dict(tmod):
  return {k: v.detach().cpu().numpy() for k, v in tmod.state_dict().items()}


# ----------------------------------------------------------------------------
# 1. Parity with PyTorch through from_torch.


# Every (layers, direction) pair runs with and without lengths, and once with an
# explicit initial carry; the full 4-way cross would only add compile time.
PARITY_CASES = [
  (1, False, "plain"),
  (1, False, "lengths+init"),
  (1, True, "lengths"),
  (1, True, "init"),
  (2, False, "lengths"),
  (2, False, "init"),
  (2, True, "plain"),
  (2, True, "lengths+init"),
]


@pytest.mark.parametrize(
  "num_layers,bidirectional,mode",
  PARITY_CASES,
  ids=[f"{n}-{'bi' if b else 'uni'}-{m}" for n, b, m in PARITY_CASES],
)
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
  grad_fn = jit_o0(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
  (loss_j, (out_j, h_j, c_j)), (g_params, g_x, g_carry) = grad_fn(params, jnp.asarray(x_np), carry0)
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


@pytest.mark.parametrize("vocab", [7, 50], ids=["folded", "embedded"])  # B * T = 24 steps
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_ids_and_embedding_match_torch_embedding(torch, x64, cell, vocab):
  """Ids with `embedding=` equal `nn.Embedding` -> the PyTorch stack, gradients included.

  With fewer entries than steps the first layer gathers rows of `embedding W_ih`
  (and its gradient is a scatter-add); with more it embeds the ids first.
  """
  from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

  torch.manual_seed(vocab)
  rng = np.random.default_rng(vocab)
  ids = rng.integers(0, vocab, size=(B, T))
  ids[0, :3] = 1  # a repeated id: its rows' gradients must add up
  table = rng.normal(size=(vocab, F))
  w_out = rng.normal(size=(B, T, 2 * H))
  w_h = rng.normal(size=(4, B, H))
  tmod = _torch_module(torch, cell, 2, True, torch.float64)
  module, params = from_torch(_numpy_state_dict(tmod), cell, 2, True)

  table_t = torch.tensor(table, requires_grad=True)
  embedded = torch.nn.functional.embedding(torch.tensor(ids), table_t)
  packed = pack_padded_sequence(embedded, torch.tensor(LENGTHS), batch_first=True,
                                enforce_sorted=False)
  out_t, hn = tmod(packed)
  out_t, _ = pad_packed_sequence(out_t, batch_first=True, total_length=T)
  h_n = hn[0] if cell == "lstm" else hn
  ((out_t * torch.tensor(w_out)).sum() + (h_n * torch.tensor(w_h)).sum()).backward()

  def loss_fn(params, table):
    out, final = module.apply({"params": params}, jnp.asarray(ids), lengths=jnp.asarray(LENGTHS),
                              embedding=table)
    return jnp.sum(out * w_out) + jnp.sum(_carry_h(final, cell) * w_h), out

  (_, out_j), (g_params, g_table) = jit_o0(
    jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(params, jnp.asarray(table))
  np.testing.assert_allclose(out_j, out_t.detach().numpy(), **TOL)
  np.testing.assert_allclose(g_table, table_t.grad.numpy(), **TOL)
  tparams = dict(tmod.named_parameters())
  for layer, suffix in [(0, ""), (0, "_reverse"), (1, "")]:
    for ours, theirs in [("w_ih", "weight_ih"), ("b_ih", "bias_ih"), ("w_hh", "weight_hh")]:
      expected = tparams[f"{theirs}_l{layer}{suffix}"].grad.numpy()
      np.testing.assert_allclose(g_params[f"l{layer}{suffix}"][ours],
                                 expected.T if ours.startswith("w") else expected, **TOL,
                                 err_msg=f"{theirs}_l{layer}{suffix}")


@pytest.mark.parametrize("cell", CELLS)
def test_cell_step_matches_torch_cell(torch, x64, cell):
  """cell_step against torch.nn.{RNN,LSTM,GRU}Cell, one step from a nonzero state."""
  torch.manual_seed(3)
  rng = np.random.default_rng(3)
  cls = {"rnn": torch.nn.RNNCell, "rnn_relu": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell,
         "gru": torch.nn.GRUCell}[cell]
  kwargs = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
  tcell = cls(F, H, dtype=torch.float64, **kwargs)
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


def _fd_check(loss, args, grads, rng, per_leaf=3, eps=1e-6):
  """Central differences of `loss(*args)` on `per_leaf` random entries of every leaf of
  `args` against `grads` (same structure); float64."""
  flat, unravel = ravel_pytree(args)
  flat = np.asarray(flat)
  g_flat = np.asarray(ravel_pytree(grads)[0])
  assert flat.dtype == np.float64 and g_flat.shape == flat.shape
  f = jit_o0(lambda v: loss(*unravel(v)))
  offset = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
    size = np.size(leaf)
    for i in offset + rng.choice(size, size=min(per_leaf, size), replace=False):
      plus, minus = flat.copy(), flat.copy()
      plus[i] += eps
      minus[i] -= eps
      numeric = (float(f(plus)) - float(f(minus))) / (2 * eps)
      analytic = g_flat[i]
      assert abs(numeric - analytic) <= 1e-6 * (1 + abs(analytic)), (
        f"d/d{jax.tree_util.keystr(path)}[{i - offset}]: finite difference {numeric} "
        f"vs jax.grad {analytic}"
      )
    offset += size
  assert offset == flat.size


@pytest.mark.parametrize("cell", CELLS)
def test_cell_step_finite_differences(x64, cell):
  rng = np.random.default_rng(11 + CELLS.index(cell))
  batch, features, hidden = 2, 3, 4
  g = NUM_GATES[cell] * hidden
  params = {
    "w_ih": rng.normal(size=(features, g)) * 0.5,
    "w_hh": rng.normal(size=(hidden, g)) * 0.5,
    "b_ih": rng.normal(size=(g,)) * 0.5,
    "b_hh": rng.normal(size=(g,)) * 0.5,
  }
  x = rng.normal(size=(batch, features))
  carry = (
    tuple(rng.normal(size=(2, batch, hidden)))
    if cell == "lstm"
    else rng.normal(size=(batch, hidden))
  )
  w = rng.normal(size=(2, batch, hidden))

  def loss(params, x, carry):
    new = cell_step(cell, params, x, carry)
    if cell == "lstm":
      return jnp.sum(new[0] * w[0]) + jnp.sum(new[1] * w[1])
    return jnp.sum(new * w[0])

  args = jax.tree.map(jnp.asarray, (params, x, carry))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
  _fd_check(loss, args, grads, rng, per_leaf=4)


@pytest.mark.parametrize("cell", CELLS)
def test_recurrent_finite_differences(x64, cell):
  """The scanned stack's gradient (a hand-written VJP) by central differences: 2 layers,
  bidirectional, lengths and an initial carry."""
  rng = np.random.default_rng(21 + CELLS.index(cell))
  module, params = _float64_module(cell, 2, True)
  x = rng.normal(size=(B, T, F))
  carry = jax.tree.map(lambda z: rng.normal(size=z.shape), module.initialize_carry(B))
  loss = _weighted_loss(module, jnp.asarray(LENGTHS), 1, x.shape[:2])
  args = jax.tree.map(jnp.asarray, (params, x, carry))
  grads = jit_o0(jax.grad(loss, argnums=(0, 1, 2)))(*args)
  _fd_check(loss, args, grads, rng, per_leaf=2)


@pytest.mark.parametrize("cell", CELLS)
def test_unroll_is_speed_only(x64, cell):
  """A scan unroll that does not divide the length: same outputs, carries, gradients."""
  rng = np.random.default_rng(31 + CELLS.index(cell))
  module, params = _float64_module(cell, 1, True)
  steps = 5
  x = rng.normal(size=(B, steps, F))
  carry = jax.tree.map(lambda z: rng.normal(size=z.shape), module.initialize_carry(B))
  lengths = jnp.asarray([5, 2, 1, 4])
  loss = _weighted_loss(module, lengths, 2, (B, steps))
  loss_unrolled = _weighted_loss(module.clone(unroll=2), lengths, 2, (B, steps))
  args = jax.tree.map(jnp.asarray, (params, x, carry))
  value_and_grad = lambda f: jit_o0(jax.value_and_grad(f, argnums=(0, 1, 2)))
  _assert_trees_close(value_and_grad(loss_unrolled)(*args), value_and_grad(loss)(*args))


def _float64_module(cell, num_layers, bidirectional):
  sd = _fake_state_dict(cell, num_layers, bidirectional, seed=6, scale=0.5)
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  return from_torch(sd, cell, num_layers, bidirectional)


def _weighted_loss(module, lengths, seed, batch_time):
  """sum(outputs * w) + sum(final carry * w'), with random weights fixed by `seed`."""
  rng = np.random.default_rng(seed)
  nd = module.num_directions
  w_out = rng.normal(size=(*batch_time, nd * module.hidden_size))
  w_carry = rng.normal(size=(2, module.num_layers * nd, batch_time[0], module.hidden_size))

  def loss(params, x, carry):
    out, final = module.apply({"params": params}, x, lengths=lengths, initial_carry=carry)
    total = jnp.sum(out * w_out)
    for k, entry in enumerate(final):
      for j, a in enumerate(jax.tree.leaves(entry)):
        total = total + jnp.sum(a * w_carry[j, k])
    return total

  return loss


# ----------------------------------------------------------------------------
# Helpers for the module-level tests below (no torch needed).


def _fake_state_dict(cell, num_layers, bidirectional, hidden=H, features=F, seed=0, scale=1.0):
  """A state dict with PyTorch's names and shapes, uniform in [-scale, scale]."""
  rng = np.random.default_rng(seed)
  g = NUM_GATES[cell] * hidden
  nd = 2 if bidirectional else 1
  u = lambda *shape: rng.uniform(-scale, scale, size=shape).astype(np.float32)
  sd = {}
  for layer in range(num_layers):
    in_f = features if layer == 0 else nd * hidden
    for suffix in ("", "_reverse") if bidirectional else ("",):
      sd[f"weight_ih_l{layer}{suffix}"] = u(g, in_f)
      sd[f"weight_hh_l{layer}{suffix}"] = u(g, hidden)
      sd[f"bias_ih_l{layer}{suffix}"] = u(g)
      sd[f"bias_hh_l{layer}{suffix}"] = u(g)
  return sd


def _random_module(cell, num_layers=2, bidirectional=False, seed=0):
  """A Recurrent and random params in PyTorch's init range (via from_torch: no init compile)."""
  sd = _fake_state_dict(cell, num_layers, bidirectional, seed=seed, scale=1.0 / np.sqrt(H))
  module, params = from_torch(sd, cell, num_layers, bidirectional)
  return module, {"params": params}


def _jit_apply(module):
  return jax.jit(module.apply, static_argnames=("deterministic",))


def _assert_trees_close(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **TOL), actual, expected)


def test_init_matches_from_torch_layout():
  """module.init creates the layout from_torch produces, in PyTorch's init range."""
  module = Recurrent(cell="lstm", hidden_size=H, num_layers=2, bidirectional=True)
  _, variables = _random_module("lstm", 2, bidirectional=True)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1, F)))
  shape = lambda a: a.shape
  assert jax.tree.map(shape, shapes) == jax.tree.map(shape, variables)
  small = Recurrent(cell="gru", hidden_size=H)
  bound = 1.0 / np.sqrt(H)
  for w in jax.tree.leaves(jax.jit(small.init)(jax.random.key(0), jnp.zeros((1, 1, F)))):
    assert np.all(np.abs(w) <= bound) and np.max(np.abs(w)) > 0.5 * bound


@pytest.mark.parametrize("cell", CELLS)
def test_module_matches_cell_step_loop(cell):
  """The scanned stack equals looping cell_step over time, layer by layer."""
  module, variables = _random_module(cell, 2, seed=1)
  params = variables["params"]
  x = jax.random.normal(jax.random.key(1), (B, T, F))
  carry0 = jax.tree.map(
    lambda z: jax.random.normal(jax.random.key(2), z.shape), module.initialize_carry(B)
  )

  @jax.jit
  def reference(x, carry0):
    layer_in, finals = x, []
    for layer in range(2):
      carry, outs = carry0[layer], []
      for t in range(T):
        carry = cell_step(cell, params[f"l{layer}"], layer_in[:, t], carry)
        outs.append(carry[0] if cell == "lstm" else carry)
      layer_in = jnp.stack(outs, axis=1)
      finals.append(carry)
    return layer_in, tuple(finals)

  _assert_trees_close(_jit_apply(module)(variables, x, initial_carry=carry0), reference(x, carry0))


# ----------------------------------------------------------------------------
# 3. Truncated BPTT: carrying the final state across chunks.


@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_state_carry(cell):
  module, variables = _random_module(cell, 2, seed=2)
  apply = _jit_apply(module)
  x = jax.random.normal(jax.random.key(CELLS.index(cell)), (B, 2 * T, F))

  out_full, carry_full = apply(variables, x)
  out_a, carry_a = apply(variables, x[:, :T])
  out_b, carry_b = apply(variables, x[:, T:], initial_carry=carry_a)

  assert len(carry_full) == 2
  np.testing.assert_allclose(jnp.concatenate([out_a, out_b], axis=1), out_full, **TOL)
  _assert_trees_close(carry_b, carry_full)
  # The second chunk really depends on the carry: starting it from zeros differs.
  out_b0, _ = apply(variables, x[:, T:])
  assert np.max(np.abs(out_b0 - out_b)) > 1e-3


# ----------------------------------------------------------------------------
# 4. Lengths: the final carry is the state after each example's last valid step.


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_final_carry(cell):
  # Bidirectional covers both directions: forward is the unidirectional path.
  module, variables = _random_module(cell, 2, bidirectional=True, seed=3)
  apply = _jit_apply(module)
  lengths = np.array([6, 3, 1, 3])
  k1, k2 = jax.random.split(jax.random.key(5 + CELLS.index(cell)))
  x = jax.random.normal(k1, (B, T, F))
  # Garbage of a different scale past each length: it must have no effect.
  pad = (np.arange(T)[None, :, None] >= lengths[:, None, None]).astype(np.float32)
  x = x + pad * 50.0 * jax.random.normal(k2, x.shape)
  out, final = apply(variables, x, lengths=jnp.asarray(lengths))

  for length in np.unique(lengths):
    idx = np.flatnonzero(lengths == length)
    out_l, final_l = apply(variables, x[idx, :length])  # no lengths: all steps valid
    np.testing.assert_allclose(out[idx, :length], out_l, **TOL)
    assert np.all(np.asarray(out)[idx, length:] == 0.0)
    _assert_trees_close(jax.tree.map(lambda a, idx=idx: a[idx], final), final_l)


# ----------------------------------------------------------------------------
# 5. Dropout between layers (PyTorch semantics: none after the last layer).


def test_dropout_between_layers():
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  rngs = {"dropout": jax.random.key(42)}
  bidirectional, nd = True, 2

  # Two layers.
  plain, variables = _random_module("lstm", 2, bidirectional, seed=4)
  dropped = plain.clone(dropout_rate=0.5)
  out_ref, carry_ref = _jit_apply(plain)(variables, x)
  apply = _jit_apply(dropped)
  out_det, carry_det = apply(variables, x, deterministic=True)
  np.testing.assert_array_equal(out_det, out_ref)
  jax.tree.map(np.testing.assert_array_equal, carry_det, carry_ref)

  out_drop, carry_drop = apply(variables, x, deterministic=False, rngs=rngs)
  assert np.max(np.abs(out_drop - out_ref)) > 1e-3, "dropout did not change a 2-layer stack"
  # Layer 0 runs before any dropout; layer 1 sees dropped-out inputs.
  jax.tree.map(np.testing.assert_array_equal, carry_drop[:nd], carry_ref[:nd])
  for a, b in zip(jax.tree.leaves(carry_drop[nd:]), jax.tree.leaves(carry_ref[nd:]), strict=True):
    assert np.max(np.abs(a - b)) > 1e-3
  # A different dropout rng gives a different result.
  out_drop2, _ = apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(43)})
  assert np.max(np.abs(out_drop2 - out_drop)) > 1e-3

  # One layer: nothing to drop between layers.
  plain1, variables1 = _random_module("lstm", 1, seed=5)
  out1_ref, carry1_ref = _jit_apply(plain1)(variables1, x)
  out1_drop, carry1_drop = _jit_apply(plain1.clone(dropout_rate=0.5))(
    variables1, x, deterministic=False, rngs=rngs
  )
  np.testing.assert_array_equal(out1_drop, out1_ref)
  jax.tree.map(np.testing.assert_array_equal, carry1_drop, carry1_ref)


# ----------------------------------------------------------------------------
# 6. from_torch input validation (plain numpy state dicts; torch not needed).


def test_from_torch_accepts_well_formed_state_dict():
  sd = _fake_state_dict("gru", 2, True)
  module, params = from_torch(sd, "gru", 2, bidirectional=True)
  assert sorted(params) == ["l0", "l0_reverse", "l1", "l1_reverse"]
  np.testing.assert_array_equal(params["l1_reverse"]["w_ih"], sd["weight_ih_l1_reverse"].T)
  np.testing.assert_array_equal(params["l0"]["b_hh"], sd["bias_hh_l0"])
  assert module == Recurrent(cell="gru", hidden_size=H, num_layers=2, bidirectional=True)
  out, carry = jax.eval_shape(module.apply, {"params": params}, jnp.zeros((2, 3, F)))
  assert out.shape == (2, 3, 2 * H) and len(carry) == 4


@pytest.mark.parametrize(
  "key", ["weight_ih_l0", "bias_ih_l0", "bias_hh_l1", "weight_hh_l1", "weight_ih_l1_reverse"]
)
def test_from_torch_missing_key(key):
  sd = _fake_state_dict("lstm", 2, True)
  del sd[key]
  with pytest.raises(ValueError, match=key):
    from_torch(sd, "lstm", 2, bidirectional=True)


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


@pytest.mark.parametrize("key,shape", [
    ("weight_ih_l1", (3 * H, H)),  # layer 1 of a bidirectional stack reads 2H features
    ("weight_ih_l0_reverse", (3 * H, F + 1)),  # the two directions disagree on inputs
    ("bias_hh_l1_reverse", (3 * H + 1,)),
    ("weight_hh_l1", (3 * H, H - 1)),
])
def test_from_torch_checks_every_tensor_shape(key, shape):
  sd = _fake_state_dict("gru", 2, True)
  sd[key] = np.zeros(shape, np.float32)
  with pytest.raises(ValueError, match=rf"{key} has shape \({shape[0]}, ?"):
    from_torch(sd, "gru", 2, bidirectional=True)


def test_lengths_outside_the_time_axis_are_refused_or_clipped_under_jit():
  module, params = from_torch(_fake_state_dict("gru", 1, True), "gru", 1, bidirectional=True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, F)), jnp.float32)
  with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\].*got \[5\]"):
    module.apply({"params": params}, x, jnp.array([5, 2]))
  # Under jit the values are unknown: a length past the end means the whole sequence
  # (the reverse direction must not read outside it).
  run = jax.jit(lambda lengths: module.apply({"params": params}, x, lengths)[0])
  np.testing.assert_allclose(run(jnp.array([9, 2])), run(jnp.array([4, 2])), rtol=1e-6)


def test_from_torch_unknown_cell():
  with pytest.raises(ValueError, match="unknown cell 'elman'"):
    from_torch(_fake_state_dict("rnn", 1, False), "elman", 1)
