"""Retrieval metrics against an independent reference that follows vsepp's loops literally.

The reference (`vsepp_i2t`, `vsepp_t2i`, `vsepp_evalrank`) is written from
github.com/fartashf/vsepp `evaluation.py`: images stored 5 times ([kN, D]), one query at a
time, `argsort` descending and `np.where(inds == i)`. It agrees with mmzoo's counting
definition whenever there are no ties, which each comparison checks of its data first.
Comparisons on float data run under `jax.enable_x64` so that float32 rounding cannot
reorder near-ties; the float32 path is compared on embeddings whose scores are exact.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, launcher_env

from mmzoo.eval import registry, retrieval

# --- The reference: vsepp's i2t / t2i / evalrank(fold5) loops, in NumPy. ---


def l2norm(x):
  return x / np.sqrt(np.sum(x**2, axis=1, keepdims=True))


def vsepp_cosine_sim(im, s):  # vsepp's encoders normalise; its cosine_sim is im.mm(s.t()).
  return l2norm(im) @ l2norm(s).T


def vsepp_dot_sim(im, s):
  return im @ s.T


def vsepp_order_sim(im, s):  # -||max(0, s - im)||_2, with vsepp's square root.
  return -np.sqrt(np.sum(np.maximum(s[None, :, :] - im[:, None, :], 0.0) ** 2, axis=2))


SIMS = {"cosine": vsepp_cosine_sim, "dot": vsepp_dot_sim, "order": vsepp_order_sim}


def vsepp_summary(ranks):
  r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
  r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
  r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
  medr = np.floor(np.median(ranks)) + 1
  meanr = ranks.mean() + 1
  return (r1, r5, r10, medr, meanr)


def vsepp_i2t(images, captions, sim, k=5):
  """images: [kN, D], each image repeated k times, as vsepp stores them."""
  npts = images.shape[0] // k
  ranks = np.zeros(npts)
  for index in range(npts):
    im = images[k * index].reshape(1, images.shape[1])
    d = sim(im, captions).flatten()
    inds = np.argsort(d)[::-1]
    rank = 1e20
    for i in range(k * index, k * index + k, 1):
      tmp = np.where(inds == i)[0][0]
      if tmp < rank:
        rank = tmp
    ranks[index] = rank
  return vsepp_summary(ranks), ranks


def vsepp_t2i(images, captions, sim, k=5):
  npts = images.shape[0] // k
  ims = np.array([images[i] for i in range(0, len(images), k)])
  ranks = np.zeros(k * npts)
  for index in range(npts):
    queries = captions[k * index:k * index + k]
    d = sim(ims, queries).T
    inds = np.zeros(d.shape)
    for i in range(len(inds)):
      inds[i] = np.argsort(d[i])[::-1]
      ranks[k * index + i] = np.where(inds[i] == index)[0][0]
  return vsepp_summary(ranks), ranks


def vsepp_evalrank(images, captions, sim, k=5, folds=1):
  """vsepp's evalrank: fold5=False for folds=1, else the mean of the per-fold metrics."""
  images = np.repeat(images, k, axis=0)
  size = images.shape[0] // folds
  results, all_ranks = [], []
  for i in range(folds):
    r, rt = vsepp_i2t(images[i * size:(i + 1) * size], captions[i * size:(i + 1) * size], sim, k)
    ri, rti = vsepp_t2i(images[i * size:(i + 1) * size], captions[i * size:(i + 1) * size],
                        sim, k)
    ar = (r[0] + r[1] + r[2]) / 3
    ari = (ri[0] + ri[1] + ri[2]) / 3
    rsum = r[0] + r[1] + r[2] + ri[0] + ri[1] + ri[2]
    results += [list(r) + list(ri) + [ar, ari, rsum]]
    all_ranks.append((rt, rti))
  mean = np.array(results).mean(axis=0)
  # vsepp prints "rsum" as mean[10] * 6, six times the mean i2t recall (its columns are
  # shifted by one there); the mean of the per-fold rsums, mean[12], is what it means.
  metrics = {"i2t": dict(zip(retrieval.METRICS, mean[:5], strict=True)),
             "t2i": dict(zip(retrieval.METRICS, mean[5:10], strict=True)),
             "rsum": mean[12]}
  return metrics, all_ranks


# --- Helpers. ---


def min_gap(images, captions, sim, k):
  """The smallest |competitor score - true score| of any query (0 means a tie)."""
  scores = sim(images, captions)
  n = images.shape[0]
  own = np.arange(k * n)[None, :] // k == np.arange(n)[:, None]
  true_i2t = np.where(own, scores, -np.inf).max(axis=1, keepdims=True)
  true_t2i = scores[np.arange(k * n) // k, np.arange(k * n)][None, :]
  return min(np.abs(scores - true_i2t)[~own].min(), np.abs(scores - true_t2i)[~own].min())


def paired_embeddings(rng, n, k, dim, noise=1.0, positive=False):
  """Images and k noisy captions each: a model of middling quality for a suitable noise.

  positive: non-negative embeddings for the order score, each caption roughly below its
  image (shrunk coordinates, plus noise that breaks the order).
  """
  if positive:
    images = np.abs(rng.standard_normal((n, dim)))
    captions = (np.repeat(images, k, axis=0) * rng.uniform(0.5, 1.0, (n * k, dim))
                + noise * np.abs(rng.standard_normal((n * k, dim))))
    return images, captions
  images = rng.standard_normal((n, dim))
  return images, np.repeat(images, k, axis=0) + noise * rng.standard_normal((n * k, dim))


def assert_metrics_close(got, want):
  for d in retrieval.DIRECTIONS:
    for m in retrieval.METRICS:
      assert got[d][m] == pytest.approx(want[d][m], abs=1e-9), (d, m, got, want)
  assert got["rsum"] == pytest.approx(want["rsum"], abs=1e-9)


# --- Against the reference. ---


@pytest.mark.parametrize("score", ["cosine", "dot", "order"])
def test_equals_vsepp_reference_with_folds(score):
  rng = np.random.default_rng(1)
  k, n, folds = 5, 200, 2
  order = score == "order"
  images, captions = paired_embeddings(rng, n, k, 32, noise=1.0 if order else 4.0, positive=order)
  for f in range(folds):
    part = slice(f * n // folds, (f + 1) * n // folds)
    cpart = slice(f * k * n // folds, (f + 1) * k * n // folds)
    assert min_gap(images[part], captions[cpart], SIMS[score], k) > 1e-9
  want, want_ranks = vsepp_evalrank(images, captions, SIMS[score], k, folds)
  assert 5 < want["i2t"]["r1"] < 95 and 5 < want["t2i"]["r1"] < 95  # A discriminating case.
  with jax.enable_x64(True):
    got = retrieval.retrieval_metrics(images, captions, k, score, folds=folds, chunk_size=37)
    for f in range(folds):
      part = slice(f * n // folds, (f + 1) * n // folds)
      cpart = slice(f * k * n // folds, (f + 1) * k * n // folds)
      i2t, t2i = retrieval.ranks(images[part], captions[cpart], k, score, chunk_size=37)
      np.testing.assert_array_equal(i2t, want_ranks[f][0])
      np.testing.assert_array_equal(t2i, want_ranks[f][1])
  assert_metrics_close(got, want)


def test_equals_vsepp_reference_1k_images():
  rng = np.random.default_rng(2)
  images, captions = paired_embeddings(rng, 1000, 5, 64, noise=3.0)
  assert min_gap(images, captions, vsepp_cosine_sim, 5) > 1e-9
  want, want_ranks = vsepp_evalrank(images, captions, vsepp_cosine_sim)
  with jax.enable_x64(True):
    i2t, t2i = retrieval.ranks(images, captions, 5, "cosine", chunk_size=300)
  np.testing.assert_array_equal(i2t, want_ranks[0][0])
  np.testing.assert_array_equal(t2i, want_ranks[0][1])
  assert_metrics_close(retrieval.metrics_from_ranks(i2t, t2i), want)


@pytest.mark.parametrize("score", ["dot", "order"])
def test_float32_equals_reference_on_exact_scores(score):
  # Entries on a 2^-10 grid in 16 dimensions: every dot product and every order score
  # (before vsepp's square root) is exact in float32, whatever the summation order.
  rng = np.random.default_rng(3)
  k, n, dim = 3, 120, 16
  low = 0 if score == "order" else -1024
  images = rng.integers(low, 1024, (n, dim)) / 1024
  captions = np.clip(np.repeat(images, k, axis=0) + rng.integers(-400, 400, (n * k, dim)) / 1024,
                     low / 1024, 1023 / 1024)
  sim = SIMS[score]
  assert min_gap(images, captions, sim, k) > 0
  want, want_ranks = vsepp_evalrank(images, captions, sim, k)
  i2t, t2i = retrieval.ranks(images.astype(np.float32), captions.astype(np.float32), k, score,
                             chunk_size=50)
  np.testing.assert_array_equal(i2t, want_ranks[0][0])
  np.testing.assert_array_equal(t2i, want_ranks[0][1])
  assert_metrics_close(retrieval.metrics_from_ranks(i2t, t2i), want)


# --- By hand. ---

# 3 images x 6 captions (k = 2; captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2).
HAND_SCORES = np.array([[0.9, 0.1, 0.8, 0.2, 0.3, 0.4],
                        [0.5, 0.75, 0.3, 0.7, 0.1, 0.2],
                        [0.2, 0.3, 0.4, 0.5, 0.15, 0.05]], np.float32)


def hand_score_fn(images, captions):
  """Looks the score up in HAND_SCORES: images are one-hot in dims 0-2, captions in 3-8."""
  table = jnp.zeros((9, 9), jnp.float32).at[:3, 3:].set(HAND_SCORES)
  return images @ table @ captions.T


def hand_inputs():
  return np.eye(9, dtype=np.float32)[:3], np.eye(9, dtype=np.float32)[3:]


def test_hand_computed_ranks_and_metrics():
  images, captions = hand_inputs()
  i2t, t2i = retrieval.ranks(images, captions, 2, hand_score_fn, chunk_size=2)
  # i2t: image 0's best own caption (0.9) beats all; image 1's best (0.7) loses to caption 1
  # (0.75); image 2's best (0.15) loses to captions 0-3 (0.2, 0.3, 0.4, 0.5).
  np.testing.assert_array_equal(i2t, [0, 1, 4])
  # t2i, column by column: c0 0.9 first; c1 0.1 < 0.75, 0.3; c2 0.3 < 0.8, 0.4; c3 0.7 first;
  # c4 0.15 < 0.3; c5 0.05 < 0.4, 0.2.
  np.testing.assert_array_equal(t2i, [0, 2, 2, 0, 1, 2])
  got = retrieval.retrieval_metrics(images, captions, 2, hand_score_fn)
  assert got["i2t"] == pytest.approx(
    {"r1": 100 / 3, "r5": 100.0, "r10": 100.0, "medr": 2.0, "meanr": 5 / 3 + 1})
  assert got["t2i"] == pytest.approx(
    {"r1": 100 / 3, "r5": 100.0, "r10": 100.0, "medr": 2.0, "meanr": 7 / 6 + 1})
  assert got["rsum"] == pytest.approx(2 * (100 / 3 + 200))


def test_ties_count_against_the_true_item():
  images, captions = hand_inputs()

  def lookup(scores):
    def score_fn(images, captions):
      table = jnp.zeros((9, 9), jnp.float32).at[:3, 3:].set(scores)
      return images @ table @ captions.T

    return score_fn

  scores = HAND_SCORES.copy()
  scores[0, 2] = 0.9  # Caption 2 (image 1's) ties image 0's best caption.
  scores[1, 4] = 0.15  # Image 1 ties image 2 on caption 4.
  i2t, t2i = retrieval.ranks(images, captions, 2, lookup(scores))
  np.testing.assert_array_equal(i2t, [1, 1, 4])  # Image 0: 0 without the tie.
  np.testing.assert_array_equal(t2i, [0, 2, 2, 0, 2, 2])  # Caption 4: 1 without the tie.
  # An image's own captions never compete: image 0's two captions tie, its rank stays 0.
  scores = HAND_SCORES.copy()
  scores[0, 1] = 0.9
  i2t, t2i = retrieval.ranks(images, captions, 2, lookup(scores))
  np.testing.assert_array_equal(i2t, [0, 1, 4])
  np.testing.assert_array_equal(t2i, [0, 0, 2, 0, 1, 2])


@pytest.mark.parametrize("score", ["cosine", "dot", "order"])
@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_collapsed_embeddings_get_worst_ranks(score, chunk_size):
  rng = np.random.default_rng(4)
  n, k = 30, 5
  images = np.tile(np.abs(rng.standard_normal((1, 24))), (n, 1)).astype(np.float32)
  captions = np.tile(np.abs(rng.standard_normal((1, 24))), (n * k, 1)).astype(np.float32)
  i2t, t2i = retrieval.ranks(images, captions, k, score, chunk_size=chunk_size)
  np.testing.assert_array_equal(i2t, k * (n - 1))  # Below every other image's caption.
  np.testing.assert_array_equal(t2i, n - 1)
  metrics = retrieval.retrieval_metrics(images, captions, k, score, chunk_size=chunk_size)
  assert metrics["i2t"]["r1"] == 0 and metrics["t2i"]["r1"] == 0 and metrics["rsum"] == 0


def test_nan_scores_count_against_the_true_item():
  images, captions = hand_inputs()

  def nan_for_image_1(images, captions):
    scores = hand_score_fn(images, captions)
    return jnp.where(images[:, 1:2] > 0, jnp.nan, scores)

  i2t, t2i = retrieval.ranks(images, captions, 2, nan_for_image_1)
  assert i2t[1] == 4  # Its own best score is NaN: every other caption counts above.
  np.testing.assert_array_equal(t2i, [1, 2, 2, 2, 2, 2])  # Image 1's NaN beats each caption.


# --- Chunking, folds, protocols, score functions. ---


@pytest.mark.parametrize("score", ["cosine", "dot", "order"])
def test_chunked_equals_unchunked(score):
  rng = np.random.default_rng(5)
  images, captions = paired_embeddings(rng, 37, 3, 8, noise=1.0, positive=score == "order")
  images, captions = images.astype(np.float32), captions.astype(np.float32)
  whole = retrieval.ranks(images, captions, 3, score, chunk_size=37)
  for chunk_size in (1, 8, 36, 100):  # 100 > N: one tile, as whole.
    chunked = retrieval.ranks(images, captions, 3, score, chunk_size=chunk_size)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_array_equal(chunked[1], whole[1])


def test_folds_average_every_metric():
  rng = np.random.default_rng(6)
  images, captions = paired_embeddings(rng, 60, 5, 8, noise=1.5)
  halves = [retrieval.retrieval_metrics(images[i * 30:(i + 1) * 30],
                                        captions[i * 150:(i + 1) * 150]) for i in range(2)]
  got = retrieval.retrieval_metrics(images, captions, folds=2)
  for d in retrieval.DIRECTIONS:
    for m in retrieval.METRICS:
      assert got[d][m] == pytest.approx((halves[0][d][m] + halves[1][d][m]) / 2)
  assert got["rsum"] == pytest.approx(sum(got[d][f"r{k}"] for d in ("i2t", "t2i")
                                          for k in (1, 5, 10)))
  with pytest.raises(ValueError, match="do not split into 7"):
    retrieval.retrieval_metrics(images, captions, folds=7)


def test_protocols():
  rng = np.random.default_rng(7)
  images, captions = paired_embeddings(rng, 5000, 5, 4, noise=0.5)
  images, captions = images.astype(np.float32), captions.astype(np.float32)
  coco1k = retrieval.protocol_metrics(images, captions, "coco1k", score_fn="dot")
  assert coco1k == retrieval.retrieval_metrics(images, captions, 5, "dot", folds=5)
  assert coco1k["i2t"]["r1"] > retrieval.protocol_metrics(
    images, captions, "coco5k", score_fn="dot")["i2t"]["r1"]  # 5x the distractors.
  with pytest.raises(ValueError, match="needs 1000 test images, got 5000"):
    retrieval.protocol_metrics(images, captions, "flickr1k")
  assert retrieval.PROTOCOLS["flickr1k"] == (1000, 1)


def test_order_score_direction():
  # Zero when the image dominates the caption in every coordinate (image below caption in
  # the order of Vendrov et al.); the caption's excess over the image is penalised.
  images = jnp.array([[1.0, 1.0]])
  captions = jnp.array([[0.5, 0.5], [2.0, 1.0], [3.0, 3.0]])
  np.testing.assert_allclose(retrieval.order_scores(images, captions), [[0.0, -1.0, -8.0]])


def test_bad_arguments():
  images, captions = hand_inputs()
  with pytest.raises(ValueError, match="unknown score function 'l2'"):
    retrieval.ranks(images, captions, 2, "l2")
  with pytest.raises(ValueError, match="6 captions for 3 images: expected 3 x 3 = 9"):
    retrieval.ranks(images, captions, 3)
  with pytest.raises(ValueError, match=r"images has 1 NaN .* \(first in row 2\)"):
    retrieval.ranks(np.where(np.eye(9)[:3] == 0, 0.0, [[1.0], [1.0], [np.nan]]), captions, 2)


def test_registered_evaluator_returns_flat_floats():
  images, captions = hand_inputs()

  class Task:
    def retrieval_embeddings(self, params, mesh, split):
      assert split == "test"
      return images, captions, 2, hand_score_fn

  results = registry.run(["retrieval"], Task(), params=None, mesh=None, split="test")
  assert set(results) == {f"{d}_{m}" for d in ("i2t", "t2i") for m in retrieval.METRICS} | {
    "rsum"}
  assert all(isinstance(v, float) for v in results.values())
  assert results["i2t_r1"] == pytest.approx(100 / 3) and results["t2i_medr"] == 2.0


# --- The command line. ---


def write_npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def test_cli_prints_one_json_object(tmp_path):
  rng = np.random.default_rng(8)
  images, captions = paired_embeddings(rng, 40, 5, 8, noise=1.0)
  images, captions = images.astype(np.float32), captions.astype(np.float32)
  path = write_npz(tmp_path / "e.npz", images=images, captions=captions)
  result = subprocess.run(
    [sys.executable, "-m", "mmzoo.eval.retrieval", "--embeddings", path, "--folds", "2"],
    env=launcher_env(1), capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1, result.stdout
  got = json.loads(lines[0])
  assert set(got) == {"i2t", "t2i", "rsum"}
  assert set(got["i2t"]) == set(got["t2i"]) == set(retrieval.METRICS)
  assert got == retrieval.retrieval_metrics(images, captions, folds=2)


def test_cli_options_in_process(tmp_path, capsys):
  rng = np.random.default_rng(9)
  images, captions = paired_embeddings(rng, 20, 2, 6, noise=1.0, positive=True)
  path = write_npz(tmp_path / "e.npz", images=images, captions=captions)
  assert retrieval.main(["--embeddings", path, "--captions_per_image", "2", "--score", "order",
                         "--folds", "4", "--chunk_size", "3"]) == 0
  got = json.loads(capsys.readouterr().out)
  assert got == retrieval.retrieval_metrics(images, captions, 2, "order", folds=4)


def bad_input_cases(tmp_path):
  rng = np.random.default_rng(10)
  images = rng.standard_normal((4, 3)).astype(np.float32)
  captions = rng.standard_normal((20, 3)).astype(np.float32)
  nan_captions = captions.copy()
  nan_captions[7, 1] = np.nan
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not a zip archive")
  return {
    "missing file": (str(tmp_path / "absent.npz"), "no such file"),
    "not an npz": (str(garbage), "cannot read as .npz"),
    "missing array": (write_npz(tmp_path / "m.npz", images=images), "no array named 'captions'"),
    "caption count": (write_npz(tmp_path / "c.npz", images=images, captions=captions[:19]),
                      "19 captions for 4 images: expected 5 x 4 = 20"),
    "dimension": (write_npz(tmp_path / "d.npz", images=images, captions=captions[:, :2]),
                  "images have dimension 3 but captions have 2"),
    "nan": (write_npz(tmp_path / "n.npz", images=images, captions=nan_captions),
            "captions has 1 NaN or infinite values (first in row 7)"),
    "1-d": (write_npz(tmp_path / "o.npz", images=images[0], captions=captions),
            "images must be 2-D"),
    "folds": (write_npz(tmp_path / "f.npz", images=images, captions=captions),
              "4 images do not split into 3 equal folds"),
    "protocol": (write_npz(tmp_path / "p.npz", images=images, captions=captions),
                 "protocol coco5k needs 5000 images, found 4"),
  }


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
  for case, (path, problem) in bad_input_cases(tmp_path).items():
    extra = {"folds": ["--folds", "3"], "protocol": ["--protocol", "coco5k"]}.get(case, [])
    assert retrieval.main(["--embeddings", path, *extra]) == 1, case
    captured = capsys.readouterr()
    assert captured.out == "", case
    assert captured.err.count("\n") == 1, (case, captured.err)
    assert captured.err.startswith(f"error: {path}: "), (case, captured.err)
    assert problem in captured.err, (case, captured.err)


def test_cli_bad_input_exits_1_without_traceback(tmp_path):
  path = str(tmp_path / "absent.npz")
  result = subprocess.run(
    [sys.executable, "-m", "mmzoo.eval.retrieval", "--embeddings", path],
    env=launcher_env(1), capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 1
  assert result.stdout == ""
  assert result.stderr == f"error: {path}: no such file\n"


def test_classification_accuracy_counts():
  from mmzoo.eval import classification, registry

  assert classification.accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == (2.0, 4.0)
  assert classification.accuracy([1, 2, 3, 4], [1, 0, 3, 0], [1, 1, 0, 0]) == (1.0, 2.0)

  class Task:
    def classification_counts(self, params, mesh, split):
      return 3.0, 4.0

  assert registry.get("accuracy")(Task(), None, None, "test") == {"accuracy": 75.0,
                                                                  "count": 4.0}
