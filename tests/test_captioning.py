"""Captioning end to end: models, the XE and SCST phases, evaluation from a workdir."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, launcher, launcher_env

from mmzoo import decoding, tasks
from mmzoo.configs import show_attend_tell, show_tell, updown
from mmzoo.models import show_attend_tell as sat_model
from mmzoo.train import loop


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("datasets"))


def _config(module, data_dir, variant="smoke", steps=2):
  config = module.get_config(variant)
  config.data.data_dir = data_dir
  config.data.build_workers = 1
  config.train.num_steps = steps
  config.train.eval_every = steps
  config.train.checkpoint_every = steps
  return config


def test_attention_weights_and_the_stepwise_decoder_match_teacher_forcing():
  model = sat_model.ShowAttendTell(vocab_size=12, embed_dim=8, hidden_size=16, attention_dim=8,
                                   encoder="precomputed", dropout_rate=0.0)
  rng = np.random.default_rng(0)
  regions = jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32)
  tokens = jnp.asarray(rng.integers(3, 12, size=(2, 4)), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), regions, tokens)
  logits, aux = model.apply(variables, regions, tokens)
  np.testing.assert_allclose(aux["attention"].sum(-1), 1.0, rtol=1e-5)
  assert aux["beta"].shape == (2, 4)
  # The step function, run by hand, gives the same logits and attention.
  state = model.apply(variables, model.apply(variables, regions, method="encode"),
                      method="init_state")
  for t in range(4):
    step_logits, state, step_aux = model.apply(variables, state, tokens[:, t], method="step")
    np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step_aux["attention"], aux["attention"][:, t], rtol=1e-5)
  # Greedy decoding through mmzoo.decoding returns the attention of each emitted word.
  state = model.apply(variables, model.apply(variables, regions, method="encode"),
                      method="init_state")

  def step(s, w):
    lo, s, a = model.apply(variables, s, w, method="step")
    return jax.nn.log_softmax(lo), s, a

  out = decoding.greedy(step, state, 2, 6)
  assert out.aux["attention"].shape == (2, 6, 5)

  # Beam search keeps the image (decoding.Shared) one copy per image; with it unwrapped,
  # tiled over beams and reordered like the rest, the search is the same.
  assert isinstance(state["image"], decoding.Shared)
  unshared = {**state, "image": state["image"].value}

  def unshared_step(s, w):
    lo, new, a = step({**s, "image": decoding.Shared(s["image"])}, w)
    return lo, {**new, "image": new["image"].value}, a

  shared_out = decoding.beam_search(step, state, 2, 3, 6)
  plain_out = decoding.beam_search(unshared_step, unshared, 2, 3, 6)
  np.testing.assert_array_equal(shared_out.sequences, plain_out.sequences)
  np.testing.assert_allclose(shared_out.scores, plain_out.scores, rtol=1e-5)
  np.testing.assert_allclose(shared_out.aux["attention"], plain_out.aux["attention"], rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("module,variant", [(show_tell, "smoke"), (show_tell, "smoke,rnn"),
                                            (updown, "smoke")])
def test_smoke_configs_train_and_evaluate(module, variant, data_dir, tmp_path):
  task = tasks.build(_config(module, data_dir, variant))
  results = loop.train_and_evaluate(task, str(tmp_path))
  assert {"Bleu_4", "CIDEr", "ROUGE_L", "grounding_mention_precision"} <= set(results)
  assert np.isfinite(list(results.values())).all()


def test_sampled_evaluation_is_seeded_and_cold_sampling_is_greedy(data_dir):
  config = _config(show_tell, data_dir)
  config.eval.batch_size = 8  # 4 batches over the 32 validation images.
  task = tasks.build(config)
  params = task.init_params(jax.random.PRNGKey(1))
  # Larger weights than init's: captions that differ between images instead of eos at once.
  params = jax.tree.map(lambda x: x * 4.0, params)
  mesh = task.mesh

  def predictions(**eval_overrides):
    for key, value in eval_overrides.items():
      task.config.eval[key] = value
    # The jitted decoder reads the config when traced: trace it again for the new one.
    task._decode = jax.jit(task._decode_impl, static_argnames=("method",))
    task._predictions_cache = None
    return task.caption_predictions(params, mesh)[1]

  greedy = predictions(beam_size=1, temperature=0.0)
  assert len(set(greedy.values())) > 1  # Not one caption for all: the check below can fail.
  assert task.decode_method() == "greedy"
  # A near-zero temperature puts all the mass on the argmax: sampling is then greedy.
  assert predictions(temperature=1e-4) == greedy
  assert task.decode_method() == "sample"
  hot = predictions(temperature=2.0, seed=0)
  assert predictions(temperature=2.0, seed=0) == hot
  assert predictions(temperature=2.0, seed=1) != hot
  assert hot != greedy
  # Each batch draws its own noise: the batches' samples are not copies of each other.
  values = list(hot.values())
  assert values[:8] != values[8:16]


def test_doubly_stochastic_regulariser_and_scheduled_sampling(data_dir):
  config = _config(show_attend_tell, data_dir)
  config.loss.doubly_stochastic = 0.7
  config.loss.scheduled_sampling_max = 0.25
  config.loss.scheduled_sampling_every = 10
  config.loss.scheduled_sampling_increase = 0.1
  task = tasks.build(config)
  assert [float(task._sample_prob(s)) for s in (0, 9, 10, 25, 100)] == pytest.approx(
      [0.0, 0.0, 0.1, 0.2, 0.25])
  params = jax.jit(task.init_params)(jax.random.PRNGKey(0))
  batch = jax.tree.map(jnp.asarray, next(task.train_batches()))
  loss, (metrics, _, _) = task.loss_fn(params, {}, batch, jax.random.PRNGKey(1))
  reg_sum, reg_count = metrics["attention_reg"]
  nll_sum, count = metrics["loss"]
  np.testing.assert_allclose(loss, nll_sum / count + reg_sum / reg_count, rtol=1e-5)
  # Both terms per word of the batch (the paper's per-caption sum NLL + lambda * penalty,
  # divided by the number of words).
  assert float(reg_count) == float(count) == float(np.sum(batch["length"]))
  # The regulariser by hand: lambda * sum over captions of sum_i (1 - sum_t alpha_ti)^2.
  features, _ = task._encode(params, batch["image"], train=True)
  inputs = batch["tokens"][:, :-1]
  _, aux = task.model.apply(params, features, inputs, True, method="teacher_forced")
  alpha = np.asarray(aux["attention"])
  mask = np.arange(inputs.shape[1])[None, :] < np.asarray(batch["length"])[:, None]
  expected = np.sum([np.sum((1 - (alpha[b] * mask[b][:, None]).sum(0)) ** 2)
                     for b in range(len(alpha))])
  np.testing.assert_allclose(reg_sum, config.loss.doubly_stochastic * expected, rtol=1e-4)


def test_xe_then_scst_then_evaluate_from_the_workdir(data_dir, tmp_path):
  env = launcher_env(devices=2)
  env["MMZOO_DATA_DIR"] = data_dir
  xe, scst = str(tmp_path / "xe"), str(tmp_path / "scst")
  common = ["--config.data.build_workers=1", "--config.train.num_steps=4"]
  run = subprocess.run(launcher("captioning") + [
      "--config=mmzoo/configs/show_attend_tell.py:smoke", f"--workdir={xe}", *common],
      env=env, capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  run = subprocess.run(launcher("captioning") + [
      "--config=mmzoo/configs/show_attend_tell.py:smoke,scst", f"--workdir={scst}",
      f"--config.train.init_from={xe}", *common], env=env, capture_output=True, text=True,
      cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "initialised params from" in run.stderr
  metrics = [json.loads(line) for line in open(f"{scst}/metrics.jsonl")]
  assert any("reward" in m and "greedy_reward" in m for m in metrics)

  run = subprocess.run(launcher("evaluate") + [f"--workdir={scst}", "--split=test",
                                               "--beam_size=2"],
                       env=env, capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr",
              "grounding_mention_precision", "grounding_relation_accuracy"):
    assert key in result
  predictions = json.load(open(result["predictions"]))
  assert len(predictions) == 32 and {"image_id", "caption"} == set(predictions[0])

  # Captioning files: any size and mode; a bad file is named, the rest still captioned.
  from PIL import Image

  Image.fromarray(np.zeros((10, 4000, 3), np.uint8) + 200).save(tmp_path / "wide.jpg")
  Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "tiny.png")
  Image.fromarray(np.zeros((9, 9, 4), np.uint8)).save(tmp_path / "rgba.png")
  (tmp_path / "text.jpg").write_text("not an image")
  files = [tmp_path / n for n in ("wide.jpg", "text.jpg", "tiny.png", "missing.png", "rgba.png")]
  run = subprocess.run(launcher("caption_images") + [
      f"--workdir={scst}", f"--attention_dir={tmp_path / 'att'}", *map(str, files)],
      env=env, capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 1
  errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 2 and "text.jpg: cannot decode" in errors[0] and "missing.png" in errors[1]
  captioned = [line for line in run.stdout.splitlines() if line.startswith(str(tmp_path))]
  assert [line.split(":")[0] for line in captioned] == [str(f) for f in files[::2]]
  assert sorted(os.listdir(tmp_path / "att")) == ["rgba.png", "tiny.png", "wide.png"]
