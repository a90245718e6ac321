"""End-to-end tests of the launchers, run as subprocesses on one CPU device.

Bad input must end in a non-zero exit and one `error: ...` line naming the
problem, never a traceback. One smoke-trained workdir is shared by the tests
that need one (across pytest-xdist workers too, under a file lock); tests that
write into it work on a copy.
"""

import fcntl
import json
import os
import platform
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO, corpus_text, launcher, launcher_env

from mmzoo.train import parallel

NUM_STEPS = 10


def run(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run(
    launcher(name) + list(args),
    env=launcher_env(1),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
  )


def train_args(config: str, workdir: str, corpus: str, *extra: str) -> list[str]:
  return [
    f"--config={REPO}/mmzoo/configs/{config}",
    f"--workdir={workdir}",
    f"--config.data.path={corpus}",
    *extra,
  ]


def assert_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
  """Non-zero exit, no traceback, and one `error:` line holding every fragment."""
  assert result.returncode != 0, result.stdout[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def validation_json(stdout: str) -> dict:
  lines = [x for x in stdout.splitlines() if x.startswith('{"validation"')]
  assert len(lines) == 1, stdout[-2000:]
  results = json.loads(lines[0])["validation"]
  assert set(results) >= {"loss", "bpc", "perplexity"}
  return results


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text(corpus_text())
  return str(path)


def _shared_dir(tmp_path_factory) -> str:
  """A directory every xdist worker of this session sees (or this run's temp dir)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  return str(base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """`(workdir, corpus, train args, result)` of one smoke LSTM run, trained once per session."""
  root = os.path.join(_shared_dir(tmp_path_factory), "launchers_trained")
  os.makedirs(root, exist_ok=True)
  workdir, corpus = os.path.join(root, "workdir"), os.path.join(root, "corpus.txt")
  args = train_args(
    "char_rnn.py:smoke",
    workdir,
    corpus,
    f"--config.train.num_steps={NUM_STEPS}",
    "--config.train.checkpoint_every=5",
    "--config.train.log_every=5",
    "--config.sample.length=20",
  )
  done = os.path.join(root, "result.json")
  with open(os.path.join(root, "lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not os.path.exists(done):
        with open(corpus, "w") as f:
          f.write(corpus_text())
        r = run("char_rnn", *args)
        with open(done, "w") as f:
          json.dump({"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}, f)
      with open(done) as f:
        result = json.load(f)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return workdir, corpus, args, result


def copy_workdir(trained, tmp_path) -> str:
  copy = str(tmp_path / "workdir")
  shutil.copytree(trained[0], copy)
  return copy


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _tree(directory: str) -> dict[str, bytes]:
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return out


# --- Training runs. ---


def test_train_smoke_lstm(trained):
  workdir, _, _, result = trained
  assert result["returncode"] == 0, result["stderr"][-3000:]
  validation_json(result["stdout"])
  assert "--- sample" in result["stdout"]
  if platform.libc_ver()[0] == "glibc":  # --retain_freed_memory, the default, applied.
    assert "freed host memory is kept for reuse" in result["stderr"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "5"]
  records = _metrics(workdir)
  assert [r["step"] for r in records if r["split"] == "train"] == [5, 10]
  assert [r["step"] for r in records if r["split"] == "validation"] == [10]


@pytest.mark.parametrize(
  "config", ["char_rnn.py:gru,smoke", "char_rnn.py:rnn,smoke", "min_char_rnn.py:smoke"]
)
def test_train_smoke_variants(config, corpus, tmp_path):
  workdir = str(tmp_path / "w")
  r = run(
    "char_rnn",
    *train_args(
      config,
      workdir,
      corpus,
      "--config.train.num_steps=4",
      "--config.train.log_every=2",
      "--config.sample.length=10",
    ),
  )
  assert r.returncode == 0, r.stderr[-3000:]
  results = validation_json(r.stdout)
  assert 0 < results["loss"] < 10
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]


def test_cpu_devices_split_the_cpu_and_train_the_same(trained, tmp_path, monkeypatch):
  """By default (--cpu_devices=auto) char_rnn runs one single-threaded CPU device per core,
  data-parallel, to the 1-device losses; an explicit count that clashes with XLA_FLAGS,
  or a malformed one, is refused in one line."""
  cores = len(os.sched_getaffinity(0))
  env = launcher_env(1)
  del env["XLA_FLAGS"]
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # As in the launcher's environment.
  monkeypatch.setenv("JAX_PLATFORMS", env["JAX_PLATFORMS"])
  expected = parallel.auto_cpu_devices([8, 8], cores=cores)  # The smoke config's batches.
  if expected < 2:
    pytest.skip(f"{cores} core(s): nothing to split")
  workdir = str(tmp_path / "w")
  args = [a.replace(trained[0], workdir) for a in trained[2]]
  r = subprocess.run(launcher("char_rnn") + args, env=env, capture_output=True, text=True,
                     timeout=300, cwd=REPO)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"--cpu_devices=auto: {expected} single-threaded CPU devices" in r.stderr
  assert f"training on {expected} devices" in r.stderr
  split = [m["loss"] for m in _metrics(workdir) if m["split"] == "train"]
  single = [m["loss"] for m in _metrics(trained[0]) if m["split"] == "train"]
  np.testing.assert_allclose(split, single, rtol=1e-5)
  # Two ways of setting the device count at once are refused, in one line.
  assert_error(run("char_rnn", *args, "--cpu_devices=2"), "--cpu_devices and XLA_FLAGS")
  assert_error(run("char_rnn", *args, "--cpu_devices=two"), "--cpu_devices=two",
               "expected 'auto' or a number")


def test_rerun_of_finished_workdir_resumes(trained, tmp_path):
  workdir = copy_workdir(trained, tmp_path)
  args = [a.replace(trained[0], workdir) for a in trained[2]]
  before = _metrics(workdir)
  r = run("char_rnn", *args)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"at step {NUM_STEPS}" in r.stderr and "resumed from" in r.stderr
  # Nothing was retrained: no new train metrics, no new checkpoints.
  assert _metrics(workdir) == before
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "5"]
  # The same params give the same final validation numbers.
  assert validation_json(r.stdout) == pytest.approx(validation_json(trained[3]["stdout"]), rel=1e-6)


# --- Evaluation and sampling from a workdir alone. ---


def test_evaluate_workdir(trained, tmp_path):
  workdir = copy_workdir(trained, tmp_path)
  r = run("evaluate", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads(r.stdout.strip().splitlines()[-1])
  assert {"loss", "bpc", "perplexity"} <= set(results)
  assert results["step"] == NUM_STEPS and results["split"] == "validation"
  with open(os.path.join(workdir, "eval", f"validation_step{NUM_STEPS}.json")) as f:
    assert json.load(f) == results
  # The same metrics the training run reported for its final params.
  final = validation_json(trained[3]["stdout"])
  for key in ("loss", "bpc", "perplexity"):
    assert results[key] == pytest.approx(final[key], rel=1e-6)


def test_sample_starts_with_prime(trained):
  prime = "the quick "
  r = run("sample", f"--workdir={trained[0]}", f"--prime={prime}", "--length=30", "--seed=3")
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.startswith(prime)
  assert len(r.stdout) == len(prime) + 30 + 1  # The sample and print's newline.


# --- Bad input: one error line, no traceback. ---


def test_missing_corpus(tmp_path):
  missing = str(tmp_path / "nonexistent.txt")
  r = run("char_rnn", *train_args("char_rnn.py:smoke", str(tmp_path / "w"), missing))
  assert_error(r, missing, "no such file")


def test_empty_corpus(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  r = run("char_rnn", *train_args("char_rnn.py:smoke", str(tmp_path / "w"), str(empty)))
  assert_error(r, str(empty), "empty")


def test_sample_unknown_priming_characters(trained):
  r = run("sample", f"--workdir={trained[0]}", "--prime=the ~quick^", "--length=5")
  assert_error(r, "'~'", "'^'", "vocabulary")


def test_incompatible_checkpoint(trained, tmp_path):
  workdir = copy_workdir(trained, tmp_path)
  args = [a.replace(trained[0], workdir) for a in trained[2]]
  before = _tree(os.path.join(workdir, "checkpoints"))
  r = run("char_rnn", *args, "--config.model.hidden_size=48")
  assert_error(r, "model.hidden_size", "32", "48", "incompatible")
  assert _tree(os.path.join(workdir, "checkpoints")) == before


def test_evaluate_without_checkpoints(tmp_path):
  r = run("evaluate", f"--workdir={tmp_path}")
  assert_error(r, str(tmp_path), "no checkpoints")
