"""Losses against hand-computed cases and plain-loop references; global negatives on 8 devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from mmzoo import losses
from mmzoo.train import parallel

# Three pairs with dot scores s[i, j] = image_i . caption_j:
#   s = [[0.9, 0.5, 0.7],
#        [0.2, 0.6, 0.1],
#        [0.8, 0.3, 0.4]]
IMAGES = np.eye(3, dtype=np.float32)
CAPTIONS = np.array([[0.9, 0.2, 0.8], [0.5, 0.6, 0.3], [0.7, 0.1, 0.4]], np.float32)


def test_sum_of_hinges_by_hand():
  # margin 0.2. Image queries (rows), positive on the diagonal:
  #   row 0: [0.2-0.9+0.5]+ + [0.2-0.9+0.7]+ = 0 + 0       = 0
  #   row 1: [0.2-0.6+0.2]+ + [0.2-0.6+0.1]+ = 0 + 0       = 0
  #   row 2: [0.2-0.4+0.8]+ + [0.2-0.4+0.3]+ = 0.6 + 0.1   = 0.7
  # Caption queries (columns):
  #   col 0: [0.2-0.9+0.2]+ + [0.2-0.9+0.8]+ = 0 + 0.1     = 0.1
  #   col 1: [0.2-0.6+0.5]+ + [0.2-0.6+0.3]+ = 0.1 + 0     = 0.1
  #   col 2: [0.2-0.4+0.7]+ + [0.2-0.4+0.1]+ = 0.5 + 0     = 0.5
  loss = losses.contrastive_loss(IMAGES, CAPTIONS, 0.2, score="dot")
  np.testing.assert_allclose(loss, 0.7 + 0.1 + 0.1 + 0.5, rtol=1e-6)


def test_max_violation_keeps_only_the_hardest_negative_by_hand():
  # Row 2: hardest negative 0.8 -> 0.6. Cols: 0 -> 0.1 (0.8), 1 -> 0.1 (0.5), 2 -> 0.5 (0.7).
  loss = losses.contrastive_loss(IMAGES, CAPTIONS, 0.2, score="dot", max_violation=True)
  np.testing.assert_allclose(loss, 0.6 + 0.1 + 0.1 + 0.5, rtol=1e-6)


def _loop_reference(s, margin, hardest):
  """The hinge loss written out with Python loops over a score matrix."""
  n = len(s)
  total = 0.0
  for i in range(n):
    rows = [max(0.0, margin - s[i][i] + s[i][j]) for j in range(n) if j != i]
    cols = [max(0.0, margin - s[i][i] + s[j][i]) for j in range(n) if j != i]
    total += (max(rows) + max(cols)) if hardest else (sum(rows) + sum(cols))
  return total


@pytest.mark.parametrize("hardest", [False, True])
@pytest.mark.parametrize("score", ["cosine", "order"])
def test_hinge_loss_equals_loop_reference(hardest, score):
  rng = np.random.default_rng(0)
  im = rng.normal(size=(6, 5)).astype(np.float32)
  cap = rng.normal(size=(6, 5)).astype(np.float32)
  if score == "cosine":
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    s = unit(im) @ unit(cap).T
  else:
    s = -np.array([[np.sum(np.maximum(0, c - i) ** 2) for c in cap] for i in im])
  expected = _loop_reference(s.tolist(), 0.3, hardest)
  got = losses.contrastive_loss(im, cap, 0.3, max_violation=hardest, score=score)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_max_violation_picks_the_hardest_negative():
  # Gradient of the hardest-negative loss flows only to the hardest negative caption.
  im = np.array([[1.0, 0.0]], np.float32).repeat(3, 0) * np.array([[1], [0.5], [0.2]])
  cap = np.array([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9]], np.float32)

  def image0_loss(c):
    s = losses.pairwise_scores(jnp.asarray(im[:1]), c, "dot")
    not_negative = jnp.array([[True, False, False]])
    return losses._hinge_per_query(s, jnp.array([0]), not_negative, 0.5, True).sum()

  grad = np.asarray(jax.grad(image0_loss)(jnp.asarray(cap)))
  assert np.abs(grad[1]).sum() > 0  # caption 1 scores 0.9: the hardest negative of image 0
  assert np.abs(grad[2]).sum() == 0


def test_matching_pairs_are_not_negatives():
  # Pairs 0 and 2 share an id (say, the same caption text): neither is the other's negative.
  ids = np.array([[7], [8], [7]])
  s = (IMAGES @ CAPTIONS.T).tolist()
  for hardest in (False, True):
    got = losses.contrastive_loss(IMAGES, CAPTIONS, 0.2, score="dot", max_violation=hardest,
                                  match_ids=ids)
    total = 0.0
    for i in range(3):
      negatives = [j for j in range(3) if ids[j, 0] != ids[i, 0]]
      rows = [max(0.0, 0.2 - s[i][i] + s[i][j]) for j in negatives]
      cols = [max(0.0, 0.2 - s[i][i] + s[j][i]) for j in negatives]
      total += (max(rows) + max(cols)) if hardest else (sum(rows) + sum(cols))
    np.testing.assert_allclose(got, total, rtol=1e-6)
  # By hand for the sum: rows 0 and 2 lose their terms against each other:
  #   row 2: [0.2-0.4+0.3]+ = 0.1;  col 1: [0.2-0.6+0.5]+ = 0.1;  every other term is 0.
  np.testing.assert_allclose(
      losses.contrastive_loss(IMAGES, CAPTIONS, 0.2, score="dot", match_ids=ids), 0.2, rtol=1e-6)


def test_keys_match_by_hand():
  # Properties: 0 red circle, 1 blue square, 2 red square. Image 0 holds {0, 1}; image 1 {2}.
  images = np.array([[1, 1, 0], [0, 0, 1]], bool)
  anything = [1, 1, 1]
  captions = np.array([[[1, 0, 1], anything],     # "something red": true of both
                       [[1, 0, 0], [0, 1, 0]],     # "a red circle and a blue square": image 0
                       [[0, 1, 1], [1, 0, 1]]],    # "a square ... something red": both
                      bool)
  np.testing.assert_array_equal(losses.keys_match(images, captions),
                                [[True, True, True], [True, False, True]])
  # In the loss, pair 1's caption is true of image 0 and vice versa for pair 0 -> both spared.
  im, cap = IMAGES[:2], CAPTIONS[:2]
  keys = (images, captions[:2])
  s = (im @ cap.T).tolist()
  got = losses.contrastive_loss(im, cap, 0.5, score="dot", match_keys=keys)
  # Row 0 (image 0): caption 1 is true of it -> spared. Row 1 (image 1): caption 0 is true of
  # image 1 -> spared. Column 0 (caption 0): image 1 makes it true -> spared. Column 1
  # (caption 1): image 0 makes it true -> spared. Nothing is left.
  assert float(got) == 0.0
  plain = losses.contrastive_loss(im, cap, 0.5, score="dot")
  expected = sum(max(0, 0.5 - s[i][i] + s[i][1 - i]) + max(0, 0.5 - s[i][i] + s[1 - i][i])
                 for i in range(2))
  np.testing.assert_allclose(plain, expected, rtol=1e-6)


def test_order_violation_is_zero_iff_x_dominates_y():
  rng = np.random.default_rng(1)
  for _ in range(200):
    x = rng.integers(0, 3, size=4).astype(np.float32)
    y = rng.integers(0, 3, size=4).astype(np.float32)
    assert (float(losses.order_violation(x, y)) == 0.0) == bool(np.all(x >= y))
  np.testing.assert_allclose(losses.order_violation(np.array([1.0, 0.0]), np.array([3.0, -1.0])),
                             4.0)  # max(0, 2)^2 + max(0, -1)^2


def test_softmax_contrastive_by_formula():
  s = IMAGES @ CAPTIONS.T
  t = 0.5
  expected = 0.0
  for i in range(3):
    expected += np.log(np.exp(s[i] / t).sum()) - s[i, i] / t
    expected += np.log(np.exp(s[:, i] / t).sum()) - s[i, i] / t
  got = losses.softmax_contrastive_loss(IMAGES, CAPTIONS, t, score="dot")
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_masked_cross_entropy_with_label_smoothing():
  logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]], np.float32))
  targets = np.array([[0, 2]])
  total, count = losses.masked_cross_entropy(logits, targets, np.array([[1.0, 0.0]]))
  np.testing.assert_allclose([total, count], [np.log(2.0), 1.0], rtol=1e-6)
  smoothed, _ = losses.masked_cross_entropy(logits, targets, np.array([[1.0, 0.0]]), 0.3)
  # 0.7 * -log 0.5 + 0.3 * mean(-log p) over the three tokens.
  expected = 0.7 * np.log(2) + 0.3 * np.mean(-np.log([0.5, 0.25, 0.25]))
  np.testing.assert_allclose(smoothed, expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["sum", "max", "order", "softmax"])
def test_global_negatives_on_8_devices_equal_one_device(name):
  assert jax.device_count() == 8
  fn = {"sum": functools.partial(losses.contrastive_loss, margin=0.2),
        "max": functools.partial(losses.contrastive_loss, margin=0.2, max_violation=True),
        "order": functools.partial(losses.contrastive_loss, margin=0.2, score="order"),
        "softmax": functools.partial(losses.softmax_contrastive_loss, temperature=0.1)}[name]
  rng = np.random.default_rng(2)
  im = rng.normal(size=(16, 8)).astype(np.float32)
  cap = rng.normal(size=(16, 8)).astype(np.float32)
  mesh = parallel.make_mesh()
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  global_fn = jax.jit(jax.value_and_grad(losses.global_contrastive_loss(fn, mesh), (0, 1)))
  ids = rng.integers(0, 6, size=(16, 2))  # Some pairs on different devices match.
  keys = (rng.random((16, 5)) < 0.3, rng.random((16, 2, 5)) < 0.4)
  put = functools.partial(jax.device_put, device=sharding)
  loss8, grads8 = global_fn(put(im), put(cap), put(ids), jax.tree.map(put, keys))
  loss1, grads1 = jax.value_and_grad(functools.partial(fn, match_ids=ids, match_keys=keys),
                                     (0, 1))(im, cap)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  for g8, g1 in zip(grads8, grads1, strict=True):
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-6)
  # Per-device losses alone would miss the cross-device negatives.
  local = sum(float(fn(im[i:i + 2], cap[i:i + 2])) for i in range(0, 16, 2))
  assert abs(local - float(loss1)) > 1e-3
