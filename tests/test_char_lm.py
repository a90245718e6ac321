"""Tests for the char-LM pieces: TBPTT streams, vocabulary, the task's carry, sampling, metrics.

Everything runs in-process on the 8 fake CPU devices of conftest.py, on a small
deterministic corpus written by the tests (the built-in stdlib corpus is never read).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import corpus_text
from jax.sharding import Mesh

from mmzoo.configs import char_rnn as char_rnn_config
from mmzoo.configs import min_char_rnn as min_char_rnn_config
from mmzoo.data import text
from mmzoo.errors import InputError
from mmzoo.eval.lm import lm_metrics
from mmzoo.models.char_rnn import filter_logits
from mmzoo.tasks.char_lm import CharLMTask
from mmzoo.train import loop, parallel


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text(corpus_text())
  return str(path)


def smoke_config(corpus_path, variant="smoke", **overrides):
  config = char_rnn_config.get_config(variant)
  config.data.path = corpus_path
  for key, value in overrides.items():
    section, name = key.split("__")
    config[section][name] = value
  return config


@pytest.fixture(scope="module")
def task(corpus_path):
  return CharLMTask(smoke_config(corpus_path))


@pytest.fixture(scope="module")
def params(task):
  return jax.jit(task.init_params)(jax.random.PRNGKey(1))


def _close(a, b, tol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


# --- StreamBatches. ---


def test_stream_batches_are_consecutive_tbptt_chunks():
  ids = np.arange(103, dtype=np.int32)  # 4 streams of 25 characters: 5 chunks of 5.
  batches = text.StreamBatches(ids, batch_size=4, seq_len=5)
  assert batches.num_chunks == 5
  chunks = [next(batches) for _ in range(12)]  # More than two epochs.
  for k, chunk in enumerate(chunks):
    assert chunk["inputs"].shape == chunk["targets"].shape == (4, 5)
    np.testing.assert_array_equal(chunk["targets"], chunk["inputs"] + 1)  # Shifted by one.
    np.testing.assert_array_equal(chunk["reset"], np.full(4, k % 5 == 0))
    # Stream b starts at b * 25 and chunk k covers [25 b + 5 k, 25 b + 5 k + 5).
    expected = np.arange(4)[:, None] * 25 + (k % 5) * 5 + np.arange(5)[None, :]
    np.testing.assert_array_equal(chunk["inputs"], expected)
  for prev, cur in zip(chunks, chunks[1:], strict=False):
    if not cur["reset"][0]:  # Chunk k + 1 continues chunk k in every stream.
      np.testing.assert_array_equal(cur["inputs"][:, 0], prev["targets"][:, -1])
  # Streams never overlap: together they tile the corpus once per epoch.
  epoch = np.concatenate([c["inputs"] for c in chunks[:5]], axis=1).ravel()
  assert len(set(epoch.tolist())) == epoch.size == 100


def test_stream_batches_state_round_trip():
  ids = np.random.default_rng(0).integers(0, 30, size=500).astype(np.int32)
  a = text.StreamBatches(ids, batch_size=4, seq_len=7)
  for _ in range(11):
    next(a)
  state = a.get_state()
  b = text.StreamBatches(ids, batch_size=4, seq_len=7)
  b.set_state(state)
  for _ in range(a.num_chunks + 2):  # Across an epoch boundary.
    x, y = next(a), next(b)
    for key in ("inputs", "targets", "reset"):
      np.testing.assert_array_equal(x[key], y[key])
  # epoch() walks from the start whatever the position.
  first = next(iter(b.epoch()))
  np.testing.assert_array_equal(first["inputs"], text.StreamBatches(ids, 4, 7).chunk(0)["inputs"])
  assert sum(1 for _ in b.epoch()) == b.num_chunks


def test_stream_batches_split_over_processes():
  ids = np.arange(1001, dtype=np.int32)
  whole = text.StreamBatches(ids, batch_size=8, seq_len=10)
  parts = [
    text.StreamBatches(ids, batch_size=8, seq_len=10, process_index=i, process_count=2)
    for i in range(2)
  ]
  for _ in range(whole.num_chunks + 1):
    w = next(whole)
    p0, p1 = (next(p) for p in parts)
    assert p0["inputs"].shape == (4, 10)
    assert not set(p0["inputs"].ravel()) & set(p1["inputs"].ravel())  # Disjoint streams.
    for key in ("inputs", "targets", "reset"):
      np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), w[key])


def test_stream_batches_errors():
  with pytest.raises(InputError, match="too few"):
    text.StreamBatches(np.arange(40, dtype=np.int32), batch_size=4, seq_len=10)
  with pytest.raises(InputError, match="not divisible"):
    text.StreamBatches(np.arange(400, dtype=np.int32), 3, 10, process_count=2)


# --- Vocabulary and corpus. ---


def test_char_vocab_round_trip_and_unknown_chars():
  vocab = text.CharVocab.from_text("hello, world\n")
  assert vocab.chars == tuple(sorted(set("hello, world\n")))
  ids = vocab.encode("low, hello\n")
  assert ids.dtype == np.int32
  assert vocab.decode(ids) == "low, hello\n"
  assert text.CharVocab.from_json(vocab.to_json()) == vocab
  with pytest.raises(InputError) as info:
    vocab.encode("hello WORLD!")
  message = str(info.value)
  for c in "WORLD!":
    assert repr(c) in message
  assert vocab.unknown("hex, yak") == ["x", "y", "a", "k"]  # Order of appearance, no repeats.


def test_split_by_position():
  ids = np.arange(200)
  train, validation = text.split_by_position(ids, 0.1)
  np.testing.assert_array_equal(train, np.arange(180))
  np.testing.assert_array_equal(validation, np.arange(180, 200))


def test_read_corpus_errors(tmp_path):
  with pytest.raises(InputError, match="no such file"):
    text.read_corpus(str(tmp_path / "missing.txt"))
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(InputError, match="empty"):
    text.read_corpus(str(tmp_path / "empty.txt"))
  (tmp_path / "bad.txt").write_bytes(b"ab\xffcd")
  assert text.read_corpus(str(tmp_path / "bad.txt")) == "ab\ufffdcd"


def test_task_rejects_corpus_outside_checkpoint_vocabulary(task, corpus_path, tmp_path):
  other = tmp_path / "other.txt"
  other.write_text(corpus_text(5_000) + "QZ")
  config = smoke_config(str(other))
  with pytest.raises(InputError, match="'Q'"):
    CharLMTask(config, artifacts=task.artifacts())


# --- The task's TBPTT carry. ---


def test_loss_fn_carry_continues_the_sequence(task, params):
  seq_len = task.config.data.seq_len
  batches = task.train_batches()
  b0, b1 = next(batches), next(batches)
  assert b0["reset"].all() and not b1["reset"].any()
  rng = jax.random.PRNGKey(0)
  loss_fn = jax.jit(task.loss_fn)
  loss0, (_, carry1) = loss_fn(params, task.init_task_state(), b0, rng)
  loss1, (metrics1, carry2) = loss_fn(params, carry1, b1, rng)

  apply = jax.jit(task.model.apply)
  both = np.concatenate([b0["inputs"], b1["inputs"]], axis=1)
  logits, carry_both = apply({"params": params}, both)
  nll = optax.softmax_cross_entropy_with_integer_labels(
    logits, np.concatenate([b0["targets"], b1["targets"]], axis=1)
  )
  _close(loss0, nll[:, :seq_len].mean())
  _close(loss1, nll[:, seq_len:].mean())
  _close(metrics1["loss"][0], nll[:, seq_len:].sum(), 1e-4)
  assert float(metrics1["loss"][1]) == b1["targets"].size
  _close(carry2, carry_both)
  logits1, _ = apply({"params": params}, b1["inputs"], carry1)
  _close(logits1, logits[:, seq_len:])
  # Without the carry the second chunk's predictions differ: the test has teeth.
  logits1_fresh, _ = apply({"params": params}, b1["inputs"])
  assert not np.allclose(logits1_fresh, logits[:, seq_len:], atol=1e-4)


def test_reset_zeroes_the_carry(task, params):
  batches = task.train_batches()
  b0, b1 = next(batches), next(batches)
  rng = jax.random.PRNGKey(0)
  loss_fn = jax.jit(task.loss_fn)
  zeros = task.init_task_state()
  _, (_, carry1) = loss_fn(params, zeros, b0, rng)
  assert any(np.abs(c).max() > 0 for c in jax.tree.leaves(carry1))
  # A reset chunk ignores the carry it is given.
  loss_a, (_, carry_a) = loss_fn(params, carry1, b0, rng)
  loss_b, (_, carry_b) = loss_fn(params, zeros, b0, rng)
  _close(loss_a, loss_b)
  _close(carry_a, carry_b)
  # Per stream: reset rows start from zeros, the others from their carry.
  mixed = dict(b1, reset=np.arange(len(b1["reset"])) % 2 == 0)
  _, (_, carry_mixed) = loss_fn(params, carry1, mixed, rng)
  _, (_, from_zeros) = loss_fn(params, zeros, dict(b1, reset=np.zeros_like(b1["reset"])), rng)
  _, (_, from_carry) = loss_fn(params, carry1, dict(b1, reset=np.zeros_like(b1["reset"])), rng)
  for m, z, c in zip(*map(jax.tree.leaves, (carry_mixed, from_zeros, from_carry)), strict=True):
    _close(m[0::2], z[0::2])
    _close(m[1::2], c[1::2])
    assert not np.allclose(z[1::2], c[1::2], atol=1e-4)


# --- Sampling. ---


def _greedy(task, params, prime: str, length: int) -> str:
  apply = jax.jit(task.model.apply)
  logits, carry = apply({"params": params}, jnp.asarray(task.vocab.encode(prime))[None])
  out = []
  for _ in range(length):
    token = int(np.argmax(np.asarray(logits)[0, -1]))
    out.append(token)
    logits, carry = apply({"params": params}, jnp.asarray([[token]], jnp.int32), carry)
  return prime + task.vocab.decode(out)


def test_sample_seeds_prime_and_greedy(task, params):
  prime, length = "the ", 24
  a = task.sample(params, prime, length, seed=0)
  assert a == task.sample(params, prime, length, seed=0)
  others = {task.sample(params, prime, length, seed=s) for s in (1, 2)}
  assert a not in others
  for s in (a, *others):
    assert s.startswith(prime) and len(s) == len(prime) + length
    assert not task.vocab.unknown(s)
  greedy = _greedy(task, params, prime, length)
  assert task.sample(params, prime, length, top_k=1, seed=3) == greedy
  assert a != greedy  # Sampling at temperature 1 is not greedy.
  # A near-zero temperature is greedy too (the temperature reaches the softmax).
  assert task.sample(params, prime, length, temperature=1e-4, seed=4) == greedy
  # No prime: a random first character, then `length` more.
  assert len(task.sample(params, "", length, seed=0)) == length + 1


def test_sample_rejects_bad_arguments(task, params):
  with pytest.raises(InputError) as info:
    task.sample(params, "the ~^", 5)
  assert "'~'" in str(info.value) and "'^'" in str(info.value)
  with pytest.raises(InputError, match="temperature"):
    task.sample(params, "the", 5, temperature=0.0)
  with pytest.raises(InputError, match="top_k"):
    task.sample(params, "the", 5, top_k=task.vocab.size + 1)


def test_filter_logits():
  logits = jnp.asarray([[1.0, 3.0, 2.0, -1.0]])
  np.testing.assert_allclose(filter_logits(logits, 2.0, 0), logits / 2.0)
  kept = np.asarray(filter_logits(logits, 0.5, 2))
  np.testing.assert_allclose(kept[0, 1:3], [6.0, 4.0])
  assert np.isneginf(kept[0, [0, 3]]).all()


# --- Metrics. ---


def test_lm_metrics_by_hand():
  m = lm_metrics(nll_sum=6.0, count=4.0)  # Mean NLL 1.5 nats.
  assert m["loss"] == pytest.approx(1.5)
  assert m["bpc"] == pytest.approx(1.5 / math.log(2.0))
  assert m["perplexity"] == pytest.approx(math.exp(1.5))
  uniform = lm_metrics(nll_sum=10 * math.log(4.0), count=10)  # Uniform over 4 symbols.
  assert uniform["bpc"] == pytest.approx(2.0) and uniform["perplexity"] == pytest.approx(4.0)
  with pytest.raises(ValueError):
    lm_metrics(1.0, 0)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_lm_scores_equal_direct_nll(task, params):
  mesh = parallel.make_mesh()
  nll_sum, count = task.lm_scores(params, mesh, "validation")
  # By hand: every eval stream is one long sequence from a zero state.
  ids = task.validation_ids[: task.config.eval.max_chars]
  batch_size, seq_len = task.config.eval.batch_size, task.config.data.seq_len
  stream_len = (len(ids) - 1) // batch_size
  n = (stream_len // seq_len) * seq_len
  assert n >= 4 * seq_len  # Several chunks, so the carry between them matters.
  streams = np.stack([ids[b * stream_len : b * stream_len + n + 1] for b in range(batch_size)])
  logits, _ = jax.jit(task.model.apply)({"params": params}, streams[:, :-1])
  logp = _log_softmax(np.asarray(logits, np.float64))
  expected = -np.take_along_axis(logp, streams[:, 1:, None], axis=-1).sum()
  assert count == batch_size * n
  assert nll_sum == pytest.approx(expected, rel=1e-5)
  results = task.evaluate(params, mesh)
  assert results == pytest.approx(lm_metrics(expected, count), rel=1e-5)
  with pytest.raises(InputError, match="splits"):
    task.lm_scores(params, mesh, "test")


# --- min-char-rnn. ---


def test_min_char_rnn_config_matches_the_gist():
  config = min_char_rnn_config.get_config()
  assert config.model.cell == "rnn"
  assert config.model.hidden_size == 100 and config.model.num_layers == 1
  assert config.model.embed_dim == 0  # One-hot inputs.
  assert config.data.seq_len == 25 and config.data.batch_size == 1
  assert config.model.init_scheme == "normal" and config.model.init_std == 0.01
  assert config.optimizer.name == "adagrad" and config.optimizer.learning_rate == 0.1
  assert config.optimizer.schedule == "constant" and config.optimizer.warmup_steps == 0
  assert config.optimizer.clip_value == 5.0 and config.optimizer.clip_norm == 0.0
  assert config.optimizer.initial_accumulator == 0.0
  assert config.train.loss_normalization == "sequence"
  assert config.model.dropout_rate == 0.0


def test_min_char_rnn_smoke_step(corpus_path):
  config = min_char_rnn_config.get_config("smoke")
  config.data.path = corpus_path
  task = CharLMTask(config)
  vocab = task.vocab.size
  mesh = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))  # One stream: one device.
  tx, init_fn, _, shardings = loop.abstract_train_state(task, mesh)
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
  p = state.params
  assert p["rnn"]["l0"]["w_ih"].shape == (vocab, 100)  # One-hot in.
  assert p["rnn"]["l0"]["w_hh"].shape == (100, 100)
  assert p["out"]["kernel"].shape == (100, vocab)
  assert np.std(p["rnn"]["l0"]["w_hh"]) == pytest.approx(0.01, rel=0.05)
  assert not np.any(p["rnn"]["l0"]["b_ih"]) and not np.any(p["out"]["bias"])

  batch = text.StreamBatches(task.train_ids, 1, 25).chunk(0)
  step = jax.jit(lambda s, b: loop.train_step(tx, task.loss_fn, s, b))
  new, metrics = step(state, parallel.global_batch(batch, mesh))
  assert int(new.step) == 1 and int(new.bad_step) == -1
  # The gist's initial loss: near-uniform predictions summed over the 25-character chunk.
  loss = float(metrics["loss"][0])  # Summed NLL.
  assert loss == pytest.approx(25 * math.log(vocab), rel=0.01)
  # First Adagrad step from a zero accumulator: every parameter moves by lr * sign(grad).
  delta = np.asarray(new.params["out"]["bias"] - p["out"]["bias"])
  np.testing.assert_allclose(np.abs(delta), 0.1, rtol=1e-3)


def test_cpu_split_follows_the_kernels(monkeypatch):
  """`--cpu_devices=auto` keeps one device where the fused kernels run the layers (the
  default LSTM, the GRU), and splits by the batch sizes elsewhere."""
  from mmzoo.nn import cpu_kernels
  from mmzoo.tasks.char_lm import cpu_split_batch_sizes

  monkeypatch.delenv(cpu_kernels.POLICY_ENV, raising=False)
  split = (32, 32)  # the default config's train and eval batch sizes
  assert cpu_split_batch_sizes(char_rnn_config.get_config("rnn")) == split  # no RNN kernel
  assert cpu_split_batch_sizes(char_rnn_config.get_config("lstm,smoke")) == (8, 8)  # hidden 32
  kernels = cpu_kernels._unsupported() is None
  for variant in ("lstm", "gru"):
    assert cpu_split_batch_sizes(char_rnn_config.get_config(variant)) == (
        None if kernels else split)
  monkeypatch.setenv(cpu_kernels.POLICY_ENV, "0")
  assert cpu_split_batch_sizes(char_rnn_config.get_config("lstm")) == split
