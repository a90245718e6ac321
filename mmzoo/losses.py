"""Losses shared by the zoo's models.

Sequence loss:
- `masked_cross_entropy`: token cross-entropy over a padded batch, with optional
  label smoothing, returned as (sum, count) so padding never biases a mean.

Joint-embedding losses over a batch of matching (image, caption) pairs, where
pair i is the positive of both image i and caption i and every other item of
the batch is a negative:
- `contrastive_loss(..., max_violation=False)`: the bidirectional hinge ranking
  loss summed over all negatives (Kiros et al. 2014, "Unifying visual-semantic
  embeddings"; the lectures' loss):
    sum_i sum_{j != i} [m - s(i_i, c_i) + s(i_i, c_j)]_+ + [m - s(i_i, c_i) + s(i_j, c_i)]_+
- `contrastive_loss(..., max_violation=True)`: only the hardest negative of each
  query (VSE++, Faghri et al. 2018, eq. 5).
- `score="order"`: the order-violation score s(i, c) = -E(i, c) with
  E(x, y) = ||max(0, y - x)||^2 (Vendrov et al. 2016, eq. 2): zero exactly when
  the image x dominates the caption y elementwise.
- `softmax_contrastive_loss`: in-batch softmax cross-entropy in both directions
  (the InfoNCE / CLIP form), with a temperature.

Global negatives: with `axis_name` set (inside `shard_map` over the mesh's
`'data'` axis), each device all-gathers the other devices' embeddings and
scores its own queries against the whole global batch, then the per-query
losses are summed over devices, so a batch's loss does not depend on how many
devices share it (`global_contrastive_loss` wraps this for a mesh).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

# --- sequences ----------------------------------------------------------------------------


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                         label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """`(sum, count)` of token losses over `mask`.

  logits `<float>[..., V]`, targets `<int>[...]`, mask `<float|bool>[...]`. With
  label smoothing e, the target distribution is (1 - e) on the target plus e / V
  on every token (Szegedy et al. 2016).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
  mask = mask.astype(jnp.float32)
  return jnp.sum(nll * mask), jnp.sum(mask)


# --- joint embeddings ---------------------------------------------------------------------


def order_violation(x: jax.Array, y: jax.Array) -> jax.Array:
  """E(x, y) = ||max(0, y - x)||^2 over the last axis (Vendrov et al. 2016)."""
  return jnp.sum(jnp.square(jnp.maximum(0.0, y - x)), axis=-1)


def pairwise_scores(images: jax.Array, captions: jax.Array, score: str = "cosine") -> jax.Array:
  """`<float32>[n, m]` scores of images `[n, D]` against captions `[m, D]`; higher is closer.

  "dot" for embeddings already normalised (VSE normalises in the model), "cosine"
  normalises here, "order" is -E(image, caption).
  """
  images = images.astype(jnp.float32)
  captions = captions.astype(jnp.float32)
  if score == "dot":
    return images @ captions.T
  if score == "cosine":
    unit = partial(jnp.linalg.norm, axis=-1, keepdims=True)
    return (images / jnp.maximum(unit(images), 1e-12)) @ (
        captions / jnp.maximum(unit(captions), 1e-12)).T
  if score == "order":
    return -order_violation(images[:, None, :], captions[None, :, :])
  raise ValueError(f"unknown score {score!r}; use dot, cosine or order")


def _hinge_per_query(scores: jax.Array, positive: jax.Array, not_negative: jax.Array,
                     margin: float, max_violation: bool) -> jax.Array:
  """Per row of `scores [n, B]` whose positive sits in column `positive [n]`.

  `not_negative [n, B]` marks columns that are no negatives of the row (its positive,
  and any other match of the query).
  """
  pos = jnp.take_along_axis(scores, positive[:, None], axis=1)
  cost = jnp.where(not_negative, 0.0, jnp.maximum(0.0, margin - pos + scores))
  return cost.max(axis=1) if max_violation else cost.sum(axis=1)


def _softmax_per_query(scores: jax.Array, positive: jax.Array, not_negative: jax.Array,
                       temperature: float) -> jax.Array:
  is_positive = jnp.arange(scores.shape[1])[None, :] == positive[:, None]
  logits = jnp.where(not_negative & ~is_positive, -jnp.inf, scores / temperature)
  pos = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
  return jax.nn.logsumexp(logits, axis=1) - pos


def keys_match(image_keys: jax.Array, caption_keys: jax.Array) -> jax.Array:
  """`<bool>[a, b]`: is caption j true of image i, by keys?

  image_keys `<bool>[a, K]`: the properties present in each image (e.g. which
  (size, colour, shape) objects a scene holds); caption_keys `<bool>[b, M, K]`:
  per caption, M requirements, each a set of properties of which the image must
  hold one (a requirement of all True always holds). Caption j is true of image
  i when every requirement meets the image.
  """
  a, b, m = image_keys.shape[0], caption_keys.shape[0], caption_keys.shape[1]
  hits = caption_keys.reshape(b * m, -1).astype(jnp.float32) @ image_keys.astype(jnp.float32).T
  return jnp.all(hits.reshape(b, m, a) > 0, axis=1).T


def _both_directions(images: jax.Array, captions: jax.Array, score: str, per_query: Callable,
                     axis_name: str | None, match_ids: jax.Array | None,
                     match_keys: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """Sum over this device's image queries and caption queries of `per_query` losses."""
  n = images.shape[0]
  gather = ((lambda x: x) if axis_name is None
            else (lambda x: jax.lax.all_gather(x, axis_name, tiled=True)))
  all_images, all_captions = gather(images), gather(captions)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  positive = offset + jnp.arange(n)
  not_negative = jnp.arange(n * (1 if axis_name is None else jax.lax.axis_size(axis_name)))[
      None, :] == positive[:, None]
  if match_ids is not None:
    # Pairs sharing an id (the same image, or the same caption text) match each other.
    all_ids = gather(match_ids)
    not_negative = not_negative | jnp.any(
        match_ids[:, None, :] == all_ids[None, :, :], axis=-1)
  not_negative_images = not_negative_captions = not_negative
  if match_keys is not None:
    # Captions true of other images of the batch are no negatives of them either way.
    image_keys, caption_keys = match_keys
    not_negative_images = not_negative | keys_match(image_keys, gather(caption_keys))
    not_negative_captions = not_negative | keys_match(gather(image_keys), caption_keys).T
  image_queries = pairwise_scores(images, all_captions, score)          # [n, B]
  caption_queries = pairwise_scores(all_images, captions, score).T      # [n, B]
  total = (per_query(image_queries, positive, not_negative_images).sum()
           + per_query(caption_queries, positive, not_negative_captions).sum())
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def contrastive_loss(images: jax.Array, captions: jax.Array, margin: float = 0.2, *,
                     max_violation: bool = False, score: str = "cosine",
                     axis_name: str | None = None, match_ids: jax.Array | None = None,
                     match_keys: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """Bidirectional hinge ranking loss, summed over queries (as VSE/VSE++ report it).

  images, captions: `<float>[n, D]`, row i of each a matching pair. Sum of hinges
  over all negatives, or the hardest negative only with `max_violation`.
  `match_ids <int>[n, m]`: pairs i and j with any equal id (e.g. the same image,
  or the same caption text) are not negatives of each other. Without them a
  batch's duplicate captions are false negatives, which the hardest-negative
  loss singles out. `match_keys = (image_keys, caption_keys)` also spares pairs
  whose caption is true of the other image (`keys_match`), e.g. "a red square"
  and any image holding one.
  """
  per_query = partial(_hinge_per_query, margin=margin, max_violation=max_violation)
  return _both_directions(images, captions, score, per_query, axis_name, match_ids,
                          match_keys)


def softmax_contrastive_loss(images: jax.Array, captions: jax.Array, temperature: float = 0.07,
                             *, score: str = "cosine", axis_name: str | None = None,
                             match_ids: jax.Array | None = None,
                             match_keys: tuple[jax.Array, jax.Array] | None = None
                             ) -> jax.Array:
  """In-batch softmax cross-entropy, image->text plus text->image, summed over queries.

  `match_ids` / `match_keys` as in `contrastive_loss`: other matches leave the softmax.
  """
  per_query = partial(_softmax_per_query, temperature=temperature)
  return _both_directions(images, captions, score, per_query, axis_name, match_ids,
                          match_keys)


def global_contrastive_loss(loss_fn: Callable, mesh: Mesh, axis: str = "data") -> Callable:
  """`loss_fn(images, captions)` over the global batch of arrays sharded on `axis`.

  `loss_fn` is `contrastive_loss` or `softmax_contrastive_loss` with its options
  bound (`functools.partial`); it runs per device inside `shard_map` with
  negatives (and `match_ids`, when given) gathered from every device.
  """
  spec = PartitionSpec(axis)

  def loss(images, captions, match_ids=None, match_keys=None):
    args = (images, captions, match_ids, match_keys)

    def per_device(images, captions, match_ids, match_keys):
      return loss_fn(images, captions, axis_name=axis, match_ids=match_ids,
                     match_keys=match_keys)

    specs = jax.tree.map(lambda _: spec, args)
    return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=PartitionSpec())(*args)

  return loss
