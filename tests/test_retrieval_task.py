"""The retrieval task end to end: smoke configs train, evaluate and answer queries."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, launcher, launcher_env

from mmzoo import losses, tasks
from mmzoo.configs import order, vse, vsepp
from mmzoo.train import loop, parallel


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("datasets"))


def _config(module, data_dir, variant="smoke"):
  config = module.get_config(variant)
  config.data.data_dir = data_dir
  config.data.build_workers = 1
  return config


@pytest.mark.parametrize("module", [vse, order])
def test_smoke_configs_train_and_evaluate(module, data_dir, tmp_path):
  config = _config(module, data_dir)
  config.train.num_steps = 4
  config.train.eval_every = 4
  config.train.checkpoint_every = 4
  task = tasks.build(config)
  results = loop.train_and_evaluate(task, str(tmp_path))
  assert {"i2t_r1", "t2i_r10", "rsum"} <= set(results)
  assert 0.0 <= results["rsum"] <= 600.0
  # The best checkpoint is what a workdir restores by default.
  restored, params, step = loop.restore_workdir(str(tmp_path), tasks.build)
  assert step == 4
  again = restored.evaluate(params, restored.mesh)
  np.testing.assert_allclose(again["rsum"], results["rsum"], rtol=1e-5)
  # Both spaces are unit-norm (order embeddings as in Vendrov et al.'s code); order's is
  # also non-negative, so no caption can sit at the origin that every image dominates.
  for emb in (restored.encode_text(params, ["the box is red", "a small circle"]),
              restored.split_images(params, "validation")):
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    assert (emb >= 0).all() == (module is order)


def test_task_loss_on_8_devices_uses_the_global_batch(data_dir):
  task = tasks.build(_config(vsepp, data_dir))
  params = jax.jit(task.init_params)(jax.random.PRNGKey(0))
  batch = next(task.train_batches())
  # Reference: the plain loss over the whole batch's embeddings, on one device
  # (in training mode, as the task's loss embeds images).
  images, _ = task._images(params, jnp.asarray(batch["image"]), train=True)
  captions = task._captions(params, jnp.asarray(batch["tokens"]), jnp.asarray(batch["length"]))
  loss_fn = jax.jit(task.loss_fn)
  warmup = task.config.loss.max_violation_warmup
  for step, hardest in [(0, False), (warmup, True)]:  # The sum first, then VSE++'s max.
    batch["step"][:] = step
    sharded = parallel.global_batch(batch, task.mesh)
    assert len(sharded["tokens"].sharding.device_set) == 8
    loss8 = loss_fn(params, {}, sharded, jax.random.PRNGKey(1))[0]
    expected = losses.contrastive_loss(
        images, captions, 0.2, max_violation=hardest, score="dot", match_ids=batch["match_ids"],
        match_keys=(batch["image_keys"], batch["caption_keys"]))
    np.testing.assert_allclose(loss8, expected, rtol=1e-5)


def test_launchers_train_evaluate_and_query(data_dir, tmp_path):
  env = launcher_env(devices=2)
  env["MMZOO_DATA_DIR"] = data_dir
  workdir = str(tmp_path / "w")
  train = subprocess.run(launcher("retrieval") + [
      "--config=mmzoo/configs/vsepp.py:smoke", f"--workdir={workdir}",
      "--config.data.build_workers=1"], env=env, capture_output=True, text=True, cwd=REPO)
  assert train.returncode == 0, train.stderr[-2000:]
  assert "rsum" in json.loads(train.stdout.strip().splitlines()[-1])["validation"]

  evaluate = subprocess.run(launcher("evaluate") + [f"--workdir={workdir}", "--split=test"],
                            env=env, capture_output=True, text=True)
  assert evaluate.returncode == 0, evaluate.stderr[-2000:]
  result = json.loads(evaluate.stdout.strip().splitlines()[-1])
  assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_medr", "rsum"} <= set(result)

  query = subprocess.run(launcher("retrieve") + [f"--workdir={workdir}", "--query=a red circle"],
                         env=env, capture_output=True, text=True)
  assert query.returncode == 0, query.stderr[-2000:]
  assert len([line for line in query.stdout.splitlines() if line.startswith(("1.", "5."))]) == 2

  grid = tmp_path / "grid.png"
  arith = subprocess.run(launcher("retrieve") + [
      f"--workdir={workdir}", "--arithmetic=test:0 - red + blue", f"--out={grid}"],
      env=env, capture_output=True, text=True)
  assert arith.returncode == 0, arith.stderr[-2000:]
  assert grid.exists()

  for bad in ["--query=a zebra circle", "--arithmetic=test:0 - red + zebra"]:
    refused = subprocess.run(launcher("retrieve") + [f"--workdir={workdir}", bad], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'zebra'" in errors[0] and "vocabulary" in errors[0]
    assert "Traceback" not in refused.stderr

  pca = tmp_path / "pca.png"
  plot = subprocess.run([sys.executable, "-m", "mmzoo.eval.plots", "embeddings",
                         f"--workdir={workdir}", f"--out={pca}"], env=env, capture_output=True,
                        text=True)
  assert plot.returncode == 0, plot.stderr[-2000:]
  assert pca.stat().st_size > 1000
