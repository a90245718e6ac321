"""Test setup: 8 fake CPU devices, so data parallelism is exercised on any machine."""

import os
import random
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
  return REPO


def launcher_env(devices: int = 1) -> dict:
  """Environment for running a launcher in a subprocess with `devices` CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def launcher(name: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, "launch", f"{name}.py")]


WORDS = (
  "the quick brown fox jumps over lazy dog def return class import lambda "
  "print(x) [i] {k: v} += -1 0.5 if else while for in not and or None True"
).split()


def corpus_text(num_chars: int = 30_000, seed: int = 0) -> str:
  """A deterministic pseudo-random mix of words and newlines, for test corpora."""
  rng = random.Random(seed)
  parts, n = [], 0
  while n < num_chars:
    word = rng.choice(WORDS) + ("\n" if rng.random() < 0.1 else " ")
    parts.append(word)
    n += len(word)
  return "".join(parts)[:num_chars]
