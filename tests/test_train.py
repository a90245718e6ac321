"""Tests for the generic trainer: data parallelism, resumption, NaN handling, config checks.

In-process tests run on the 8 fake CPU devices of conftest.py; the kill-and-resume
test runs `launch/char_rnn.py` in subprocesses on one device.
"""

import functools
import hashlib
import json
import os
import platform
import signal
import subprocess
import time

import jax
import ml_collections
import numpy as np
import pytest
from conftest import REPO, corpus_text, launcher, launcher_env
from jax.sharding import Mesh

from mmzoo import tasks
from mmzoo.configs import char_rnn as char_rnn_config
from mmzoo.errors import InputError
from mmzoo.tasks.char_lm import CharLMTask
from mmzoo.train import loop, parallel


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text(corpus_text())
  return str(path)


def _assert_trees_close(a, b, tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


# --- 1. Eight devices compute what one device computes. ---


def test_data_parallel_step_equals_single_device(corpus_path):
  config = char_rnn_config.get_config("smoke")
  config.data.path = corpus_path
  config.model.dropout_rate = 0.2  # The dropout masks must not depend on the sharding.
  task = CharLMTask(config)
  mesh8 = parallel.make_mesh()
  mesh1 = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  assert mesh8.devices.size == 8
  tx, init_fn, abstract, _ = loop.abstract_train_state(task, mesh8)
  state0 = jax.jit(init_fn)(jax.random.PRNGKey(0))

  def step_and_grads(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)  # What train_step uses.
    loss = lambda p: task.loss_fn(p, state.task_state, batch, rng)[0]
    return loop.train_step(tx, task.loss_fn, state, batch), jax.grad(loss)(state.params)

  runs = {}
  for name, mesh in (("8", mesh8), ("1", mesh1)):
    shardings = loop.state_shardings(abstract, mesh)
    fn = jax.jit(step_and_grads, in_shardings=(shardings, parallel.batch_sharding(mesh)))
    state, batches, trace = jax.device_put(state0, shardings), task.train_batches(), []
    for _ in range(3):  # The TBPTT carry and the RNG step move on between steps.
      (state, metrics), grads = fn(state, parallel.global_batch(next(batches), mesh))
      trace.append(jax.device_get((state, metrics, grads)))
    runs[name] = (trace, state)
  carry = jax.tree.leaves(runs["8"][1].task_state)[0]
  assert len(carry.sharding.device_set) == 8  # The batch really was split.
  for (s8, m8, g8), (s1, m1, g1) in zip(runs["8"][0], runs["1"][0], strict=True):
    np.testing.assert_allclose(m8["loss"][0], m1["loss"][0], rtol=1e-5)
    assert m8["loss"][1] == m1["loss"][1] == config.data.batch_size * config.data.seq_len
    np.testing.assert_allclose(m8["grad_norm"][0], m1["grad_norm"][0], rtol=1e-5)
    _assert_trees_close(g8, g1, 1e-6)
    _assert_trees_close(s8.params, s1.params, 1e-6)
    _assert_trees_close(s8.opt_state, s1.opt_state, 1e-6)
    _assert_trees_close(s8.task_state, s1.task_state, 1e-6)
    assert int(s8.step) == int(s1.step) and int(s8.bad_step) == int(s1.bad_step) == -1
  # Dropout is live: another key gives another loss, so equal losses above mean equal masks.
  batch = next(task.train_batches())
  loss_fn = jax.jit(task.loss_fn)
  carry0 = task.init_task_state()
  losses = [float(loss_fn(state0.params, carry0, batch, jax.random.PRNGKey(k))[0]) for k in (1, 2)]
  assert abs(losses[0] - losses[1]) > 1e-4


# --- 2. A run killed mid-way and resumed ends where an uninterrupted run ends. ---


def _finished_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _train_command(corpus: str, workdir: str, *, num_steps: int, every: int) -> list[str]:
  return launcher("char_rnn") + [
    f"--config={REPO}/mmzoo/configs/char_rnn.py:smoke",
    f"--workdir={workdir}",
    f"--config.data.path={corpus}",
    f"--config.train.num_steps={num_steps}",
    f"--config.train.checkpoint_every={every}",
    f"--config.train.log_every={every}",
    f"--config.train.eval_every={num_steps}",
    "--config.sample.length=8",
  ]


def _validation(stdout: str) -> dict:
  line = [x for x in stdout.splitlines() if x.startswith('{"validation"')]
  assert len(line) == 1, stdout
  return json.loads(line[0])["validation"]


def _start(command: list[str], log_path) -> subprocess.Popen:
  with open(log_path, "w") as log:  # The child keeps its own copy of the descriptor.
    return subprocess.Popen(command, env=launcher_env(1), stdout=log, stderr=subprocess.STDOUT)


def test_kill_and_resume_equals_uninterrupted_run(corpus_path, tmp_path):
  num_steps, every = 48, 4
  killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
  command = functools.partial(_train_command, corpus_path, num_steps=num_steps, every=every)
  # The uninterrupted run goes alongside the one that is killed.
  reference = _start(command(clean), tmp_path / "clean.log")
  victim = _start(command(killed), tmp_path / "killed.log")
  try:
    deadline = time.monotonic() + 240
    while not _finished_steps(killed) and victim.poll() is None and time.monotonic() < deadline:
      time.sleep(0.01)
    alive = victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    before = _finished_steps(killed)
    assert alive, "the run ended before it could be killed: make it longer"
    assert before and max(before) < num_steps, f"not killed mid-run: checkpoints {before}"
    assert victim.returncode == -signal.SIGKILL

    resumed = subprocess.run(
      command(killed), env=launcher_env(1), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert f"at step {max(before)}\n" in resumed.stderr  # The last checkpoint before the kill.
    reference.wait(timeout=300)
  finally:
    for process in (victim, reference):
      if process.poll() is None:
        process.kill()
        process.wait()
  reference_log = (tmp_path / "clean.log").read_text()
  assert reference.returncode == 0, reference_log[-3000:]
  assert _finished_steps(killed)[-1] == _finished_steps(clean)[-1] == num_steps

  _, params_resumed, step_a = loop.restore_workdir(killed, tasks.build)
  _, params_clean, step_b = loop.restore_workdir(clean, tasks.build)
  assert step_a == step_b == num_steps
  _assert_trees_close(params_resumed, params_clean, 1e-6)
  a, b = _validation(resumed.stdout), _validation(reference_log)
  assert a == pytest.approx(b, rel=1e-6)


# --- A fake task for the trainer's own behaviour. ---

BATCH = 8


def fake_config(**train) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "fake"
  config.seed = 0
  config.model = ml_collections.ConfigDict({"hidden_size": 4})
  config.data = ml_collections.ConfigDict({"batch_size": BATCH})
  config.optimizer = ml_collections.ConfigDict(
    {"name": "sgd", "learning_rate": 0.05, "schedule": "constant", "warmup_steps": 0}
  )
  config.train = ml_collections.ConfigDict(
    dict(num_steps=12, log_every=100, eval_every=100, checkpoint_every=3, keep_checkpoints=10)
  )
  config.train.update(train)
  return config


class FakeBatches:
  """Linear-regression batches; the batch of step `nan_at` holds a NaN."""

  def __init__(self, hidden: int, nan_at: int | None):
    self.hidden, self.nan_at, self.position = hidden, nan_at, 0

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng(self.position)
    x = rng.normal(size=(BATCH, self.hidden)).astype(np.float32)
    y = (x.sum(axis=1) + 0.1 * rng.normal(size=BATCH)).astype(np.float32)
    if self.position == self.nan_at:
      x[3, 1] = np.nan
    self.position += 1
    return {"x": x, "y": y}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])


class FakeTask:
  """The smallest implementation of `loop.Task`."""

  def __init__(self, config, nan_at=None, vocab="abc"):
    self.config, self.nan_at, self.vocab = config, nan_at, vocab
    self.tokens_per_batch = BATCH
    self.ended = False

  def init_params(self, rng):
    return {"w": 0.1 * jax.random.normal(rng, (self.config.model.hidden_size,))}

  def init_task_state(self):
    return jax.numpy.zeros((BATCH, 1))

  def loss_fn(self, params, task_state, batch, rng):
    err = batch["x"] @ params["w"] - batch["y"]
    sq = (err**2).sum()
    return sq / BATCH, ({"loss": (sq, float(BATCH))}, task_state + err[:, None])

  def train_batches(self):
    return FakeBatches(self.config.model.hidden_size, self.nan_at)

  def evaluate(self, params, mesh, split="validation"):
    return {"distance": float(np.sum((np.asarray(params["w"]) - 1.0) ** 2))}

  def artifacts(self):
    return {"vocab": self.vocab}

  def on_train_end(self, params):
    self.ended = True


# --- 3. NaN or Inf stops training and keeps the last good checkpoint. ---


@pytest.mark.parametrize("log_every", [1, 100])  # Caught at a log step, or at a checkpoint.
def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, log_every):
  config = fake_config(log_every=log_every)
  task = FakeTask(config, nan_at=7)
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError, match=r"at step 7\b") as info:
    loop.train_and_evaluate(task, workdir)
  assert "step 6" in str(info.value)  # The last good checkpoint it names.
  assert not task.ended
  assert _finished_steps(workdir) == [3, 6]  # Nothing saved at or after the bad step.
  params = loop.restore_params(task, workdir)
  assert np.isfinite(params["w"]).all()
  # The kept checkpoint is the state after the 6 good steps, not a later one.
  clean_dir = str(tmp_path / "clean")
  clean = FakeTask(fake_config(num_steps=6))
  results = loop.train_and_evaluate(clean, clean_dir)
  assert clean.ended and np.isfinite(results["distance"])
  _assert_trees_close(params, loop.restore_params(clean, clean_dir), 1e-7)
  assert not np.allclose(params["w"], loop.restore_params(clean, clean_dir, step=3)["w"])


class InfTask(FakeTask):
  def loss_fn(self, params, task_state, batch, rng):
    loss, aux = super().loss_fn(params, task_state, batch, rng)
    return loss * jax.numpy.inf, aux


def test_inf_loss_before_any_checkpoint(tmp_path):
  workdir = str(tmp_path / "inf")
  with pytest.raises(FloatingPointError, match="at step 0;.*no checkpoint had been saved"):
    loop.train_and_evaluate(InfTask(fake_config(log_every=1, num_steps=4)), workdir)
  assert _finished_steps(workdir) == []


# --- 4. Resuming under another config is refused and leaves the checkpoint alone. ---


def _snapshot(directory: str) -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_incompatible_config_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(FakeTask(fake_config(num_steps=3)), workdir)
  before = _snapshot(workdir)
  assert any(k.startswith(os.path.join("checkpoints", "3")) for k in before)

  wider = fake_config(num_steps=6)
  wider.model.hidden_size = 5
  with pytest.raises(InputError, match="model.hidden_size: 4 in checkpoint vs 5 now") as info:
    loop.train_and_evaluate(FakeTask(wider), workdir)
  assert "--workdir" in str(info.value)
  with pytest.raises(InputError, match="vocabulary differs"):
    loop.train_and_evaluate(FakeTask(fake_config(num_steps=6), vocab="abd"), workdir)
  assert _snapshot(workdir) == before

  # Fields outside the compatibility sections may change: training goes on from step 3.
  longer = FakeTask(fake_config(num_steps=6))
  loop.train_and_evaluate(longer, workdir)
  assert _finished_steps(workdir) == [3, 6]
  fresh_dir = str(tmp_path / "fresh")
  loop.train_and_evaluate(FakeTask(fake_config(num_steps=6)), fresh_dir)
  _assert_trees_close(
    loop.restore_params(longer, workdir), loop.restore_params(longer, fresh_dir), 1e-7
  )


def test_state_shardings_split_only_the_task_state():
  task = FakeTask(fake_config())
  mesh = parallel.make_mesh()
  _, _, abstract, shardings = loop.abstract_train_state(task, mesh)
  assert shardings.task_state.spec == parallel.batch_sharding(mesh).spec
  for leaf in jax.tree.leaves((shardings.params, shardings.opt_state, shardings.rng)):
    assert leaf.is_fully_replicated
  assert abstract.params["w"].shape == (4,)


def test_learning_rate_schedules_by_hand():
  from mmzoo.train import optim

  def rates(**fields):
    config = ml_collections.ConfigDict({"learning_rate": 1.0, "warmup_steps": 0, **fields})
    schedule = optim.learning_rate_schedule(config, 100)
    return [float(schedule(step)) for step in (0, 10, 49, 50, 99)]

  np.testing.assert_allclose(rates(schedule="constant"), [1, 1, 1, 1, 1])
  cosine = [0.5 * (1 + np.cos(np.pi * s / 100)) for s in (0, 10, 49, 50, 99)]
  np.testing.assert_allclose(rates(schedule="cosine"), cosine, rtol=1e-6, atol=1e-7)
  # VSE++'s drop: x0.1 from step 50 on, on top of the schedule.
  steps = (0, 10, 49, 50, 99)
  dropped = [c * (0.1 if s >= 50 else 1.0) for c, s in zip(cosine, steps, strict=True)]
  np.testing.assert_allclose(rates(schedule="cosine", drop_step=50, drop_factor=0.1), dropped,
                             rtol=1e-6, atol=1e-7)
  # Linear warm-up to the peak over 20 steps, then the schedule.
  np.testing.assert_allclose(rates(schedule="constant", warmup_steps=20)[:2], [0.0, 0.5])


def test_auto_cpu_devices(monkeypatch):
  """--cpu_devices=auto: the most devices, at most one per core, that every batch splits
  into; none when XLA_FLAGS sets a count, in a multi-process job, or off the CPU."""
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  auto = parallel.auto_cpu_devices
  assert auto([32, 32], cores=2) == 2
  assert auto([32, 12], cores=8) == 4  # 8, 7, 6 and 5 do not divide both; 4 does.
  assert auto([32], cores=3) == 2
  assert auto([7, 32], cores=16) == 0  # Only 1 divides both: leave one device.
  assert auto([32], cores=1) == 0
  assert auto([32], multi_process=True, cores=8) == 0
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert auto([32], cores=8) == 0
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert auto([32], cores=8) == 0


def test_in_flight_waits_for_the_step_before_or_this_one(monkeypatch):
  """Depth 2: `admit(step)` waits for the step dispatched before it, never for the new
  one. Depth 1: for the new one. CPU-only processes (this one) get depth 1."""
  waited = []
  monkeypatch.setattr(jax, "block_until_ready", lambda x: waited.append(x) or x)
  window = parallel.InFlight(2)
  window.admit("step 1")
  assert waited == []
  window.admit("step 2")
  window.admit("step 3")
  assert waited == ["step 1", "step 2"]
  waited.clear()
  window = parallel.InFlight()
  window.admit("step 1")
  window.admit("step 2")
  assert waited == ["step 1", "step 2"]
  assert parallel.steps_in_flight() == 1
  with pytest.raises(ValueError, match="depth"):
    parallel.InFlight(3)


_FAULTS_PER_ALLOCATION = """
import ctypes, resource, sys
from mmzoo.train import host_memory
if sys.argv[1] == "retain":
  assert host_memory.retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def allocate_touch_free(size=64 << 20):
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
allocate_touch_free()  # The heap's first growth faults in any case.
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  allocate_touch_free()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def test_retain_freed_memory_ends_page_faults_of_reallocation():
  """By default a freed 64 MiB block goes back to the kernel and every new one is faulted
  in again (16,384 faults of 4 KiB pages here); with freed memory retained the next
  allocation reuses it without a fault."""
  if platform.libc_ver()[0] != "glibc":
    pytest.skip("a glibc malloc policy; this C library is not glibc")

  def faults(mode):
    out = subprocess.run(["python", "-c", _FAULTS_PER_ALLOCATION, mode], check=True,
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    return int(out.stdout)

  default, retained = faults("default"), faults("retain")
  assert default >= 32, default  # At least one per 2 MiB, even with transparent huge pages.
  assert retained * 20 <= default, (retained, default)
