"""Test setup: 8 fake CPU devices, so data parallelism is exercised on any machine."""

import os
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
