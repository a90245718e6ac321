"""Tests for mmzoo.nn.cpu_kernels: the fused LSTM and GRU CPU kernels against PyTorch
and the XLA loop.

The kernels compute in float32 only, so they are checked against PyTorch in
float32 and against mmzoo's XLA loop (itself checked against PyTorch in float64
in test_recurrent.py). Every comparison first asserts that a kernel really ran.
The tests that need the kernels skip, with the reason, where they cannot be built.
"""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import launcher_env
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmzoo.nn import cpu_kernels
from mmzoo.nn.recurrent import Recurrent, from_torch, scan_layer

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _close(ours, ref, **kw):
  """Equal to float32 rounding: 1e-5 relative, or 1e-5 of the array's largest entry."""
  ref = np.asarray(ref)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()), **kw)


@pytest.fixture
def kernel(monkeypatch):
  """The kernels' default policy for this test; skips where the kernels cannot run."""
  monkeypatch.delenv(cpu_kernels.POLICY_ENV, raising=False)
  if not cpu_kernels.available():
    pytest.skip(f"the fused CPU kernels cannot run here: {cpu_kernels._unsupported()}")


def _uses_kernel(fn, *args, cell="lstm") -> bool:
  text = jax.jit(fn).lower(*args).as_text()
  return f"mmzoo_{cell}_forward" in text


def _final_term(final):
  """A weighted sum of every final state (LSTM: h and c), so that all their cotangents differ."""
  return sum(jnp.sum(s * w) for layer in final
             for s, w in zip(jax.tree.leaves(layer), (0.3, -0.7), strict=False))


def _loss_fn(module, proj):
  """A loss of the outputs and of every final state, so that all cotangents are nonzero."""

  def loss(params, x, carry):
    y, final = module.apply({"params": params}, x, initial_carry=carry)
    return jnp.sum(y * proj) + _final_term(final)

  return loss


def _random_carry(rng, cell, count, batch, hidden):
  def state():
    return jnp.asarray(rng.normal(size=(batch, hidden)), jnp.float32)

  return tuple((state(), state()) if cell == "lstm" else state() for _ in range(count))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_matches_torch(kernel, cell):
  """Outputs, final states and every gradient against torch.nn.LSTM / nn.GRU, float32."""
  torch = pytest.importorskip("torch", reason="torch is not importable; this parity test needs it")
  B, T, F, H, L = 7, 9, 24, 64, 2
  torch.manual_seed(0)
  tmod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
      F, H, num_layers=L, bidirectional=True, batch_first=True)
  module, params = from_torch({k: v.detach().numpy() for k, v in tmod.state_dict().items()},
                              cell, L, bidirectional=True)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, T, F)).astype(np.float32)
  h0 = rng.normal(size=(2 * L, B, H)).astype(np.float32)
  c0 = rng.normal(size=(2 * L, B, H)).astype(np.float32)
  proj = rng.normal(size=(2 * H,)).astype(np.float32)

  xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
  if cell == "lstm":
    out_t, (hn_t, cn_t) = tmod(xt, (h0t, c0t))
    loss_t = (out_t * torch.tensor(proj)).sum() + 0.3 * hn_t.sum() - 0.7 * cn_t.sum()
    carry = tuple((jnp.asarray(h0[k]), jnp.asarray(c0[k])) for k in range(2 * L))
  else:
    out_t, hn_t = tmod(xt, h0t)
    loss_t = (out_t * torch.tensor(proj)).sum() + 0.3 * hn_t.sum()
    carry = tuple(jnp.asarray(h0[k]) for k in range(2 * L))
  loss_t.backward()

  def states(final, which):  # h (0) or c (1) of every layer and direction, stacked
    return jnp.stack([f[which] if cell == "lstm" else f for f in final])

  loss = _loss_fn(module, jnp.asarray(proj))
  assert _uses_kernel(jax.grad(loss, argnums=(0, 1, 2)), params, jnp.asarray(x), carry,
                      cell=cell)
  out, final = module.apply({"params": params}, jnp.asarray(x), initial_carry=carry)
  np.testing.assert_allclose(out, out_t.detach().numpy(), **TOL)
  np.testing.assert_allclose(states(final, 0), hn_t.detach().numpy(), **TOL)
  if cell == "lstm":
    np.testing.assert_allclose(states(final, 1), cn_t.detach().numpy(), **TOL)

  d_params, d_x, d_carry = jax.grad(loss, argnums=(0, 1, 2))(params, jnp.asarray(x), carry)
  grad_tol = {"rtol": 1e-4, "atol": 1e-5}  # float32 sums over 9 steps x 7 examples
  np.testing.assert_allclose(d_x, xt.grad.numpy(), **grad_tol)
  np.testing.assert_allclose(states(d_carry, 0), h0t.grad.numpy(), **grad_tol)
  if cell == "lstm":
    np.testing.assert_allclose(states(d_carry, 1), c0t.grad.numpy(), **grad_tol)
  for name, p in tmod.named_parameters():  # weight_ih_l1_reverse -> l1_reverse/w_ih
    kind, _, layer = name.partition("_l")
    ours = d_params[f"l{layer}"][{"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih",
                                  "bias_hh": "b_hh"}[kind]]
    np.testing.assert_allclose(ours.T if kind.startswith("weight") else ours, p.grad.numpy(),
                               err_msg=name, **grad_tol)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch,hidden,layers", [(1, 64, 1), (13, 128, 2), (6, 64, 1)])
def test_matches_the_xla_loop(kernel, cell, batch, hidden, layers):
  """Values and gradients equal the XLA loop's, across the kernel's row tiles (6, then the
  rest); the second of two layers takes `dx` in the kernel (input width a multiple of 64)."""
  rng = np.random.default_rng(batch)
  x = jnp.asarray(rng.normal(size=(batch, 11, 20)), jnp.float32)
  proj = jnp.asarray(rng.normal(size=(hidden,)), jnp.float32)
  carry = _random_carry(rng, cell, layers, batch, hidden)
  results = []
  for fused in (True, False):
    module = Recurrent(cell=cell, hidden_size=hidden, num_layers=layers, fused_cpu_kernel=fused)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    loss = jax.value_and_grad(_loss_fn(module, proj), argnums=(0, 1, 2))
    assert _uses_kernel(loss, params, x, carry, cell=cell) == fused
    results.append(jax.jit(loss)(params, x, carry))
  for ours, ref in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
    _close(ours, ref)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bad_id", [False, True])
def test_ids_and_embedding(kernel, cell, bad_id):
  """Ids with an embedding (the char model's first layer: rows of `embedding W_ih`
  gathered, no input matmul) through the kernel equal the XLA loop; an id outside
  the table gives NaN from its step on in both, as `jnp.take` does."""
  rng = np.random.default_rng(5)
  ids = rng.integers(0, 9, size=(4, 10))
  if bad_id:
    ids[2, 6] = 9
  ids = jnp.asarray(ids, jnp.int32)
  table = jnp.asarray(rng.normal(size=(9, 12)), jnp.float32)
  proj = jnp.asarray(rng.normal(size=(64,)), jnp.float32)
  results = []
  for fused in (True, False):
    module = Recurrent(cell=cell, hidden_size=64, num_layers=2, fused_cpu_kernel=fused)
    params = module.init(jax.random.PRNGKey(0), ids, embedding=table)["params"]

    def outputs(params, table, module=module):
      return module.apply({"params": params}, ids, embedding=table)

    def loss(params, table):
      y, final = outputs(params, table)
      return jnp.sum(y * proj) + _final_term(final)

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    assert _uses_kernel(grad, params, table, cell=cell) == fused
    results.append((jax.jit(outputs)(params, table), jax.jit(grad)(params, table)))
  y = np.asarray(results[0][0][0])
  assert np.isnan(y[2, 6:]).all() == bad_id and np.isfinite(np.delete(y, 2, axis=0)).all()
  for ours, ref in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
    _close(ours, ref)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_time_major_scan_layer(kernel, cell):
  """`scan_layer` (time-major, input projection given; a GRU's `b_hh` apart) through the
  kernel equals the XLA loop."""
  rng = np.random.default_rng(1)
  T, B, H = 8, 5, 64
  gates = 4 if cell == "lstm" else 3
  xw = jnp.asarray(rng.normal(size=(T, B, gates * H)), jnp.float32)
  w_hh = jnp.asarray(rng.normal(size=(H, gates * H)) * 0.1, jnp.float32)
  b_hh = None if cell == "lstm" else jnp.asarray(rng.normal(size=(gates * H,)), jnp.float32)
  carry = _random_carry(rng, cell, 1, B, H)[0]

  def loss(xw, w_hh, b_hh, carry, fused):
    out, final = scan_layer(cell, xw, w_hh, b_hh, carry, None, fused=fused)
    return jnp.sum(out * jnp.arange(H)) + _final_term([final])

  assert _uses_kernel(lambda *a: loss(*a, True), xw, w_hh, b_hh, carry, cell=cell)
  ours, ref = (jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(xw, w_hh, b_hh, carry, fused)
               for fused in (True, False))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
    _close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sharded_batch_runs_per_device(kernel, cell):
  """8 devices, the batch sharded: each device runs its own rows; the result is 1 device's."""
  assert jax.device_count() == 8
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(16, 7, 12)), jnp.float32)
  module = Recurrent(cell=cell, hidden_size=64, num_layers=2)
  params = module.init(jax.random.PRNGKey(0), x)["params"]
  proj = jnp.asarray(rng.normal(size=(64,)), jnp.float32)
  carry = module.initialize_carry(16)
  grad = jax.jit(jax.grad(_loss_fn(module, proj)))
  single = grad(params, x, carry)

  mesh = Mesh(np.array(jax.devices()), ("data",))
  shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))  # noqa: E731
  args = (jax.device_put(params, NamedSharding(mesh, P())), shard(x), jax.tree.map(shard, carry))
  hlo = grad.lower(*args).compile().as_text()
  calls = [line for line in hlo.splitlines()
           if f'custom_call_target="mmzoo_{cell}_forward"' in line]
  assert calls and all("f32[2,7,64]" in line for line in calls), calls  # 16 rows / 8 devices
  assert "all-gather" not in hlo
  sharded = grad(*args)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
    _close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_vmap_maps_the_kernel(kernel, cell):
  """Per-example gradients under vmap equal one call per example."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 2, 5, 4)), jnp.float32)
  module = Recurrent(cell=cell, hidden_size=64)
  params = module.init(jax.random.PRNGKey(0), x[0])["params"]

  def loss(params, x):
    return jnp.sum(module.apply({"params": params}, x)[0] ** 2)

  assert _uses_kernel(loss, params, x[0], cell=cell)
  mapped = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, x)
  for i in range(3):
    each = jax.grad(loss)(params, x[i])
    for a, b in zip(jax.tree.leaves(mapped), jax.tree.leaves(each), strict=True):
      _close(a[i], b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nan_propagates(kernel, cell):
  """A NaN input makes its own example's outputs NaN, not a finite number; others stay finite."""
  x = np.random.default_rng(4).normal(size=(3, 4, 8)).astype(np.float32)
  x[1, 2, 5] = np.nan
  module = Recurrent(cell=cell, hidden_size=64)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros_like(x))["params"]
  out, _ = jax.jit(module.apply)({"params": params}, jnp.asarray(x))
  out = np.asarray(out)
  assert np.isnan(out[1, 2:]).all() and np.isfinite(out[1, :2]).all()
  assert np.isfinite(out[[0, 2]]).all()


def test_when_the_kernels_apply(monkeypatch):
  """Only fitting LSTM and GRU layers take a kernel, and none with MMZOO_CPU_KERNELS=0."""
  x, w = jnp.zeros((2, 3, 4)), jnp.zeros((64, 256))
  h = jnp.zeros((2, 64))
  carry = (h, h)
  monkeypatch.setenv(cpu_kernels.POLICY_ENV, "0")
  assert not cpu_kernels.applies("lstm", x, w, carry, None)
  assert not cpu_kernels.applies("gru", x, w[:, :192], h, None)
  monkeypatch.delenv(cpu_kernels.POLICY_ENV)
  if not cpu_kernels.available():
    pytest.skip(f"the fused CPU kernels cannot run here: {cpu_kernels._unsupported()}")
  assert cpu_kernels.applies("lstm", x, w, carry, None)  # by default, with this process's 8 devices
  assert cpu_kernels.applies("gru", x, w[:, :192], h, None)
  assert not cpu_kernels.applies("rnn", x, w[:, :64], h, None)  # no kernel for the vanilla RNN
  assert not cpu_kernels.applies("lstm", x, w, carry, jnp.ones((2, 3, 1), bool))  # lengths
  assert not cpu_kernels.applies("lstm", x, jnp.zeros((48, 192)), carry, None)  # 48 % 64 != 0
  assert not cpu_kernels.applies("lstm", x.astype(jnp.bfloat16), w, carry, None)
  assert not cpu_kernels.applies("gru", x, w[:, :192], h.astype(jnp.bfloat16), None)
  # Judged before JAX starts (how a launcher splits the CPU): the same cells and sizes.
  assert cpu_kernels.expected("lstm", 64) and cpu_kernels.expected("gru", 128)
  assert not cpu_kernels.expected("rnn", 64) and not cpu_kernels.expected("lstm", 48)
  monkeypatch.setenv(cpu_kernels.POLICY_ENV, "0")
  assert not cpu_kernels.expected("lstm", 64)


def _previous(h0, hs, axis):
  """h_{t-1} of every step, in numpy: h0, then hs but the last step."""
  return np.concatenate([np.expand_dims(h0, axis), np.delete(hs, -1, axis=axis)], axis=axis)


@pytest.mark.parametrize("axis,shape,n,parts", [
    (1, (3, 5, 7, 6), 64, "xh"),  # one block; row tiles of 4 and 3, then 6
    (0, (1500, 3, 70, 13), 192, "xh"),  # 4500 rows: two chunks of 4096, partial blocks
    (1, (4, 9, 1, 64), 128, "x"),  # one column of x; no hs
    (0, (7, 2, 5, 64), 64, "h"),  # no x
    (1, (0, 3, 6, 8), 64, "xh"),  # no rows: zeros
])
def test_weight_grads_match_numpy(kernel, axis, shape, n, parts):
  """The weight-gradient GEMM, [x | h_prev]^T d over all rows (h_prev: h0, then hs
  shifted by a step), against float64 numpy, batch-major and time-major."""
  rng = np.random.default_rng(5)
  d0, d1, width, hidden = shape
  x = rng.normal(size=(d0, d1, width)).astype(np.float32)
  hs = rng.normal(size=(d0, d1, hidden)).astype(np.float32)
  h0 = rng.normal(size=(d1 if axis == 0 else d0, hidden)).astype(np.float32)
  d = rng.normal(size=(d0, d1, n)).astype(np.float32)
  args = (x if "x" in parts else None, hs if "h" in parts else None,
          h0 if "h" in parts else None, d)
  fn = jax.jit(cpu_kernels.weight_grads, static_argnums=0)
  assert "mmzoo_weight_grads" in fn.lower(axis, *args).as_text()
  dw_x, dw_h = fn(axis, *args)
  f64 = lambda a: a.astype(np.float64)  # noqa: E731
  if "x" in parts:
    _close(dw_x, np.einsum("abi,abj->ij", f64(x), d))
  else:
    assert dw_x is None
  if "h" in parts:
    _close(dw_h, np.einsum("abi,abj->ij", _previous(f64(h0), f64(hs), axis), d))
  else:
    assert dw_h is None


def test_weight_grads_sharded_and_vmapped(kernel):
  """With the batch sharded over 8 devices, the parts are summed (an all-reduce, no
  all-gather); under vmap, each mapped element gets its own product."""
  rng = np.random.default_rng(6)
  x = rng.normal(size=(16, 11, 24)).astype(np.float32)
  hs = rng.normal(size=(16, 11, 64)).astype(np.float32)
  h0 = rng.normal(size=(16, 64)).astype(np.float32)
  d = rng.normal(size=(16, 11, 128)).astype(np.float32)

  def ref(x, hs, h0, d):
    x, hs, h0 = (a.astype(np.float64) for a in (x, hs, h0))
    return (np.einsum("bti,btj->ij", x, d),
            np.einsum("bti,btj->ij", _previous(h0, hs, 1), d))

  mesh = Mesh(np.array(jax.devices()), ("data",))
  shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))  # noqa: E731
  fn = jax.jit(functools.partial(cpu_kernels.weight_grads, 1))
  args = tuple(map(shard, (x, hs, h0, d)))
  hlo = fn.lower(*args).compile().as_text()
  assert "all-reduce" in hlo and "all-gather" not in hlo
  assert 'custom_call_target="mmzoo_weight_grads"' in hlo and "f32[2,11,24]" in hlo  # own rows
  for ours, want in zip(fn(*args), ref(x, hs, h0, d), strict=True):
    _close(ours, want)
  split = lambda a: a.reshape(4, 4, *a.shape[1:])  # noqa: E731
  mapped = jax.vmap(fn)(*map(split, (x, hs, h0, d)))
  for i in range(4):
    part = slice(4 * i, 4 * i + 4)
    for ours, want in zip(mapped, ref(x[part], hs[part], h0[part], d[part]), strict=True):
      _close(ours[i], want)


# The kernels from a fresh cache in a process with one CPU device (the default policy, the
# calling thread plus helpers from XLA's pool on a multi-core machine), against the XLA loop.
_FRESH = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import jax, jax.numpy as jnp, numpy as np
from mmzoo.nn import cpu_kernels
from mmzoo.nn.recurrent import Recurrent
x = jnp.asarray(np.random.default_rng(0).normal(size=(13, 6, 10)), jnp.float32)
out = {}
for fused in (True, False):
  m = Recurrent(cell="gru", hidden_size=128, fused_cpu_kernel=fused)
  p = m.init(jax.random.PRNGKey(0), x)["params"]
  f = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply({"params": p}, x)[0]))))
  out[fused] = (f(p, x), "mmzoo_gru_forward" in f.lower(p, x).as_text())
err = max(float(jnp.abs(a - b).max() / max(1.0, jnp.abs(b).max()))  # float32 rounding, relative
          for a, b in zip(jax.tree.leaves(out[True][0]), jax.tree.leaves(out[False][0])))
print(json.dumps({"kernel": out[True][1], "xla": out[False][1], "err": err}))
"""


def _run_fresh(tmp_path, **env):
  run_env = launcher_env(devices=1)
  run_env.pop(cpu_kernels.POLICY_ENV, None)
  run_env.update(MMZOO_CACHE_DIR=str(tmp_path / "cache"), **env)
  proc = subprocess.run([sys.executable, "-c", _FRESH], env=run_env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_fresh_build_runs_by_default_with_one_device(tmp_path):
  if cpu_kernels._unsupported():
    pytest.skip(f"the fused CPU kernels cannot run here: {cpu_kernels._unsupported()}")
  result, stderr = _run_fresh(tmp_path)
  assert "built the fused recurrent CPU kernels" in stderr
  assert len(list((tmp_path / "cache" / "kernels").glob("recurrent_cpu-*.so"))) == 1
  assert result["kernel"] and not result["xla"]
  assert result["err"] < 1e-5


def test_failed_build_falls_back_to_the_xla_loop(tmp_path):
  """A compiler that fails leaves the XLA loop in place and says why; results are unchanged."""
  result, stderr = _run_fresh(tmp_path, CXX="false")
  assert not result["kernel"] and result["err"] == 0.0
  assert "fused recurrent CPU kernels not used" in stderr
  assert not list((tmp_path / "cache").rglob("*.so"))
