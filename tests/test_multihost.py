"""Multi-process training on one machine: 2 launcher processes on 127.0.0.1.

The processes talk through JAX's coordination service and gloo's CPU
collectives, as on a real multi-host job. Checks that 2 processes train the
same parameters as 1 process on the same global batches, that both write one
shared checkpoint, that only process 0 writes metrics, and that killing one
process stops the other at once with a line naming the lost one.
"""

import json
import os
import random
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import launcher, launcher_env

from mmzoo import tasks
from mmzoo.configs import char_rnn as char_rnn_config
from mmzoo.train import loop

STEPS = 6
STARTUP_TIMEOUT_S = 240  # Importing, initialising and compiling, on a loaded 2-core machine.
PEER_LOSS_BOUND_S = 90  # Longest a survivor may take to stop after its peer dies.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  """30k characters of deterministic pseudo-random words."""
  rng = random.Random(0)
  words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
           for _ in range(300)]
  text = " ".join(rng.choice(words) for _ in range(6000))[:30_000]
  path = tmp_path_factory.mktemp("corpus") / "words.txt"
  path.write_text(text)
  return str(path)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _config_args(corpus: str, num_steps: int, **train) -> list[str]:
  args = ["--config=" + os.path.join(os.path.dirname(char_rnn_config.__file__), "char_rnn.py")
          + ":smoke", f"--config.data.path={corpus}", f"--config.train.num_steps={num_steps}"]
  return args + [f"--config.train.{k}={v}" for k, v in train.items()]


def _start(args: list[str], workdir, num_processes: int, devices: int, log_dir,
           *extra: str, env: dict[str, str] | None = None) -> list[subprocess.Popen]:
  """Starts a job's processes; process i logs to log_dir/p{i}.out and p{i}.err.

  `env` adds to the launcher's environment."""
  common = [*launcher("char_rnn"), *args, f"--workdir={workdir}", *extra]
  if num_processes > 1:
    common += [f"--coordinator_address=127.0.0.1:{_free_port()}",
               f"--num_processes={num_processes}"]
  procs = []
  for i in range(num_processes):
    cmd = common + ([f"--process_id={i}"] if num_processes > 1 else [])
    with open(log_dir / f"p{i}.out", "w") as out, open(log_dir / f"p{i}.err", "w") as err:
      procs.append(subprocess.Popen(cmd, stdout=out, stderr=err,
                                    env={**launcher_env(devices), **(env or {})}))
  return procs


def _stop(procs: list[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def _wait_all(procs: list[subprocess.Popen], log_dir, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  for i, p in enumerate(procs):
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      _stop(procs)
      pytest.fail(f"process {i} still running after {timeout} s:\n{_tail(log_dir, i)}")
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{_tail(log_dir, i)}"


def _tail(log_dir, i: int, lines: int = 30) -> str:
  return "\n".join((log_dir / f"p{i}.err").read_text().splitlines()[-lines:])


def _results(log_dir, i: int) -> dict:
  lines = (log_dir / f"p{i}.out").read_text().splitlines()
  return json.loads(next(line for line in lines if line.startswith('{"validation"')))


def test_two_processes_train_like_one(corpus, tmp_path):
  args = _config_args(corpus, STEPS, checkpoint_every=3, eval_every=STEPS, log_every=2)
  logs2, logs1 = tmp_path / "logs2", tmp_path / "logs1"
  logs2.mkdir()
  logs1.mkdir()
  work2, work1 = tmp_path / "two_processes", tmp_path / "one_process"
  two = _start(args, work2, 2, 2, logs2, "--heartbeat_timeout=5")
  one = _start(args, work1, 1, 4, logs1)  # At the same time: the jobs overlap their waits.
  try:
    _wait_all(two, logs2, STARTUP_TIMEOUT_S)
    _wait_all(one, logs1, STARTUP_TIMEOUT_S)
  finally:
    _stop(two + one)

  # One checkpoint per step, written by both processes together.
  assert sorted(os.listdir(work2 / "checkpoints")) == ["3", "6"]
  # Only process 0 writes metrics, logs training progress and samples.
  records = [json.loads(line) for line in (work2 / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["split"]) for r in records] == [
      (2, "train"), (4, "train"), (6, "train"), (6, "validation")]
  assert len(os.listdir(work2 / "tensorboard")) == 1
  assert f"step {STEPS}/{STEPS}" in (logs2 / "p0.err").read_text()
  assert "step " not in (logs2 / "p1.err").read_text()
  assert "--- sample" in (logs2 / "p0.out").read_text()
  assert "--- sample" not in (logs2 / "p1.out").read_text()

  # The same parameters and validation loss as one process on the same global batches.
  config = char_rnn_config.get_config("smoke")
  config.data.path = corpus
  config.train.num_steps = STEPS
  task = tasks.build(config)
  params2 = loop.restore_params(task, str(work2))
  params1 = loop.restore_params(task, str(work1))
  initial = jax.jit(task.init_params)(jax.random.split(jax.random.PRNGKey(config.seed))[0])
  for a, b, c in zip(jax.tree.leaves(params2), jax.tree.leaves(params1),
                     jax.tree.leaves(initial), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(a), np.asarray(c))  # Training did move them.
  loss2, loss1 = _results(logs2, 0)["validation"]["loss"], _results(logs1, 0)["validation"]["loss"]
  assert loss2 == pytest.approx(loss1, rel=1e-5)


def test_two_processes_with_the_lstm_kernel(corpus, tmp_path):
  """One CPU device per process runs the fused LSTM kernel, partitioned across the processes:
  the parameters equal one process's on 2 devices with the kernel off (the XLA loop)."""
  from mmzoo.nn import cpu_kernels
  if cpu_kernels._unsupported():
    pytest.skip(f"the fused CPU kernels cannot run here: {cpu_kernels._unsupported()}")
  args = _config_args(corpus, 4, checkpoint_every=4, eval_every=4) + [
      "--config.model.hidden_size=64"]
  logs2, logs1 = tmp_path / "logs2", tmp_path / "logs1"
  logs2.mkdir()
  logs1.mkdir()
  two = _start(args, tmp_path / "two", 2, 1, logs2, "--heartbeat_timeout=5")
  one = _start(args, tmp_path / "one", 1, 2, logs1, env={cpu_kernels.POLICY_ENV: "0"})
  try:
    _wait_all(two, logs2, STARTUP_TIMEOUT_S)
    _wait_all(one, logs1, STARTUP_TIMEOUT_S)
  finally:
    _stop(two + one)
  used = "run through the fused CPU kernel"
  assert all(used in (logs2 / f"p{i}.err").read_text() for i in range(2))
  assert used not in (logs1 / "p0.err").read_text()
  config = char_rnn_config.get_config("smoke")
  config.data.path, config.train.num_steps, config.model.hidden_size = corpus, 4, 64
  task = tasks.build(config)
  for a, b in zip(jax.tree.leaves(loop.restore_params(task, str(tmp_path / "two"))),
                  jax.tree.leaves(loop.restore_params(task, str(tmp_path / "one"))), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("victim", [1, 0])
def test_killed_process_stops_the_job(corpus, tmp_path, victim):
  """SIGKILL one process mid-training: the other exits 1 at once, naming it."""
  args = _config_args(corpus, 10_000, checkpoint_every=5, eval_every=10_000, log_every=1)
  procs = _start(args, tmp_path / "workdir", 2, 1, tmp_path, "--heartbeat_timeout=5")
  survivor = 1 - victim
  try:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while "step 7/" not in (tmp_path / "p0.err").read_text():  # Past a checkpoint.
      for i, p in enumerate(procs):
        assert p.poll() is None, f"process {i} exited {p.returncode}:\n{_tail(tmp_path, i)}"
      assert time.monotonic() < deadline, f"training did not start:\n{_tail(tmp_path, 0)}"
      time.sleep(0.2)
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
      procs[survivor].wait(timeout=PEER_LOSS_BOUND_S)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process {survivor} still running {PEER_LOSS_BOUND_S} s after process "
                  f"{victim} was killed:\n{_tail(tmp_path, survivor)}")
    took = time.monotonic() - killed_at
  finally:
    _stop(procs)
  err = (tmp_path / f"p{survivor}.err").read_text()
  assert procs[survivor].returncode == 1, err[-3000:]
  assert (f"error: lost process {victim} of 2: it exited before the job finished "
          f"(killed or crashed; see its log); stopping process {survivor} too") in err, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert took < 10, f"took {took:.1f} s"  # The watchdog sees the closed connection at once.
