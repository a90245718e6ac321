r"""Image<->text retrieval metrics: R@1/5/10, median and mean rank, rsum.

The protocol of VSE (Kiros et al. 2014), order embeddings (Vendrov et al. 2016) and
VSE++ (Faghri et al. 2018), as `i2t` and `t2i` in github.com/fartashf/vsepp
(`evaluation.py`) define it. There are N images and kN captions; caption j belongs to
image j // k (k = captions_per_image, 5 for COCO and Flickr30k).

- image -> text (annotation): the rank of an image is the rank of the best-ranked of its
  k captions among all kN captions sorted by descending score.
- text -> image (search): the rank of a caption is the rank of its image among the N
  images sorted by descending score.

Ranks are 0-based. R@K = 100 * fraction of queries with rank < K; medr =
floor(median(rank)) + 1; meanr = mean(rank) + 1; rsum = the sum of the six recalls.

**Ties count against the model.** vsepp reads ranks off `argsort`, so among equal scores
a rank depends on where argsort leaves them, and a model whose embeddings have collapsed
to one point (all scores equal) can score well by position alone. Here a rank is the
number of competitors whose score is >= the true item's score (and a NaN score, true or
competing, also counts as a competitor above): a collapsed model gets R@1 = 0 in both
directions. Without ties this equals vsepp's argsort rank exactly:

- t2i rank of caption j = #{images i != j // k : s(i, j) >= s(j // k, j)};
- i2t rank of image i   = #{captions j not of image i : s(i, j) >= max_c s(i, c)}, the max
  over the image's own k captions (its own other captions are never competitors: the
  best of them is the one that is ranked, and the rest sit below it).

Scores come from a function `score_fn(images [n, D], captions [m, D]) -> [n, m]`, higher
meaning more similar, given by name ("cosine", "dot", "order") or as a JAX-traceable
callable. All N x kN scores are never held at once: the score matrix is computed in
tiles of `chunk_size` images x `k * chunk_size` captions inside one jitted loop, and only
the true scores and the competitor counts ([N] and [kN] vectors) outlive a tile. The
tiles on the diagonal (an image chunk with its own captions) run first and give the true
scores, so every score is compared with true scores computed by the same code: the
collapsed model's ties are exact ties.

Protocols (`PROTOCOLS`): "coco1k" (the 5000-image COCO test set in 5 folds of 1000 images
/ 5000 captions, every metric averaged over the folds, medr and meanr included, as
vsepp's `evalrank(fold5=True)`; rsum is the sum of the six fold-averaged recalls, i.e. the
mean of the per-fold rsums, where vsepp's fold5 printout shows 6 x the mean i2t recall
under "rsum" through an index slip), "coco5k" (all 5000 images at once) and "flickr1k" (the
1000-image Flickr30k test set, no folds). vsepp stores each image 5 times (a [5N, D]
image array); here images are given once ([N, D]).

Command line (prints one JSON object; `--folds` or `--protocol` for fold averages):

  python -m mmzoo.eval.retrieval --embeddings E.npz [--captions_per_image 5] \
      [--folds 5 | --protocol coco1k] [--score cosine|dot|order]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmzoo.errors import InputError
from mmzoo.eval import registry

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

RECALLS = (1, 5, 10)
DIRECTIONS = ("i2t", "t2i")
METRICS = ("r1", "r5", "r10", "medr", "meanr")

# The order score's [rows, m, D] differences are formed at most this many elements at a
# time (XLA fuses them into the sum, but a backend that does not stays within ~512 MiB).
_ORDER_BLOCK_ELEMENTS = 2**27


def dot_scores(images: jax.Array, captions: jax.Array) -> jax.Array:
  """<float>[n, m] inner products of `images` [n, D] and `captions` [m, D]."""
  return jnp.matmul(images, captions.T, precision=jax.lax.Precision.HIGHEST)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows of `x` [n, D] scaled to unit norm (an all-zero row stays zero)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def cosine_scores(images: jax.Array, captions: jax.Array) -> jax.Array:
  """<float>[n, m] cosine similarities (vsepp's `cosine_sim` on normalised embeddings)."""
  return dot_scores(l2_normalize(images), l2_normalize(captions))


def order_scores(images: jax.Array, captions: jax.Array) -> jax.Array:
  """<float>[n, m] order-embedding scores -||max(0, caption - image)||^2.

  Vendrov et al. 2016, "Order-Embeddings of Images and Language", section 2: the
  order-violation penalty E(x, y) = ||max(0, y - x)||^2 is 0 iff x <= y in the reversed
  product order on R^D_+ (x_d >= y_d for every d), where x is the more specific item
  (lower in the visual-semantic hierarchy) and y its abstraction. Captions are
  abstractions of images (image <= caption: images sit below their captions, with the
  larger coordinates), and the caption-image score is -E(image, caption) = -||max(0,
  caption - image)||^2: 0 when the image dominates the caption in every coordinate, and
  each coordinate where the caption exceeds the image is penalised. This is vsepp's
  `order_sim(im, s)` = -||max(0, s - im)||_2 without its square root, a monotone map
  that leaves every rank unchanged.

  The [n, m, D] differences are summed over D in blocks of image rows (`lax.map`).
  """
  images = jnp.asarray(images)
  captions = jnp.asarray(captions)
  rows = max(1, _ORDER_BLOCK_ELEMENTS // max(1, captions.shape[0] * captions.shape[1]))

  def one_image(image: jax.Array) -> jax.Array:  # [D] -> [m]
    return -jnp.sum(jnp.square(jnp.maximum(captions - image, 0.0)), axis=-1)

  return jax.lax.map(one_image, images, batch_size=min(rows, images.shape[0]))


SCORE_FNS: dict[str, ScoreFn] = {"cosine": cosine_scores, "dot": dot_scores,
                                 "order": order_scores}


class Protocol(NamedTuple):
  """A published evaluation protocol: how many test images, in how many folds."""
  num_images: int
  folds: int


PROTOCOLS: dict[str, Protocol] = {
  "coco1k": Protocol(num_images=5000, folds=5),  # COCO 1K test: mean of 5 folds of 1000.
  "coco5k": Protocol(num_images=5000, folds=1),  # COCO 5K test.
  "flickr1k": Protocol(num_images=1000, folds=1),  # Flickr30k 1K test.
}


def check_embeddings(images: Any, captions: Any, captions_per_image: int = 5,
                     folds: int = 1) -> None:
  """Raises ValueError, naming the problem, unless the inputs can be evaluated.

  `images` and `captions` are arrays (NumPy or JAX) of shapes [N, D] and [kN, D].
  """
  if captions_per_image < 1:
    raise ValueError(f"captions_per_image must be positive, got {captions_per_image}")
  if folds < 1:
    raise ValueError(f"folds must be positive, got {folds}")
  for name, x in (("images", images), ("captions", captions)):
    dtype = np.dtype(x.dtype)
    if dtype.kind not in "biuf":
      raise ValueError(f"{name} must be a numeric array, got dtype {dtype}")
    if len(x.shape) != 2:
      raise ValueError(f"{name} must be 2-D [count, dim], got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
      raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
  num_images, dim = images.shape
  if captions.shape[1] != dim:
    raise ValueError(f"images have dimension {dim} but captions have {captions.shape[1]}")
  if captions.shape[0] != captions_per_image * num_images:
    raise ValueError(
      f"{captions.shape[0]} captions for {num_images} images: expected "
      f"{captions_per_image} x {num_images} = {captions_per_image * num_images}")
  if num_images % folds:
    raise ValueError(f"{num_images} images do not split into {folds} equal folds")
  for name, x in (("images", images), ("captions", captions)):
    bad = ~np.isfinite(np.asarray(x))
    if bad.any():
      row = int(np.argwhere(bad)[0][0])
      raise ValueError(f"{name} has {int(bad.sum())} NaN or infinite values (first in row {row})")


def ranks(images: Any, captions: Any, captions_per_image: int = 5,
          score_fn: str | ScoreFn = "cosine", chunk_size: int = 1024
          ) -> tuple[np.ndarray, np.ndarray]:
  """0-based (pessimistic) ranks of every query, as vsepp's `i2t`/`t2i` define them.

  Args:
    images: <float>[N, D] image embeddings.
    captions: <float>[kN, D] caption embeddings; caption j describes image j // k.
    captions_per_image: k.
    score_fn: "cosine", "dot", "order", or a pure, JAX-traceable `(images [n, D], captions
      [m, D]) -> [n, m]` (higher = more similar). A callable is a static argument of the
      jitted loop: pass the same function object again to reuse its compilation.
    chunk_size: images per tile; a tile scores chunk_size x (k * chunk_size) pairs.

  Returns:
    (i2t <int32>[N]: the rank of each image's best caption among all kN captions,
     t2i <int32>[kN]: the rank of each caption's image among the N images).
  """
  images, captions = np.asarray(images), np.asarray(captions)
  check_embeddings(images, captions, captions_per_image)
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  prepare, tile_fn = _resolve_score_fn(score_fn)
  images, captions = _as_float(images), _as_float(captions)
  chunk = min(chunk_size, images.shape[0])
  i2t, t2i = _ranks_jit(images, captions, k=captions_per_image, chunk=chunk,
                        prepare=prepare, tile_fn=tile_fn)
  return np.asarray(i2t), np.asarray(t2i)


def metrics_from_ranks(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, Any]:
  """{"i2t": {r1, r5, r10, medr, meanr}, "t2i": {...}, "rsum"} from 0-based ranks."""
  result: dict[str, Any] = {}
  for direction, r in zip(DIRECTIONS, (i2t_ranks, t2i_ranks), strict=True):
    r = np.asarray(r, dtype=np.float64)
    result[direction] = {f"r{k}": 100.0 * float(np.mean(r < k)) for k in RECALLS}
    result[direction]["medr"] = float(np.floor(np.median(r)) + 1)
    result[direction]["meanr"] = float(np.mean(r) + 1)
  result["rsum"] = _rsum(result)
  return result


def retrieval_metrics(images: Any, captions: Any, captions_per_image: int = 5,
                      score_fn: str | ScoreFn = "cosine", folds: int = 1,
                      chunk_size: int = 1024) -> dict[str, Any]:
  """R@1/5/10, medr, meanr in both directions, and rsum; averaged over `folds`.

  With folds=F the images are cut into F consecutive folds of N/F images (with their
  captions), each fold is evaluated on its own, and every metric is the mean over the
  folds (vsepp's 5-fold COCO 1K protocol for F=5 on the 5K test set).

  Returns:
    {"i2t": {"r1", "r5", "r10", "medr", "meanr"}, "t2i": {...}, "rsum": float}.
  """
  images, captions = np.asarray(images), np.asarray(captions)
  check_embeddings(images, captions, captions_per_image, folds)
  fold_images = images.shape[0] // folds
  fold_captions = fold_images * captions_per_image
  per_fold = []
  for f in range(folds):
    i2t, t2i = ranks(images[f * fold_images:(f + 1) * fold_images],
                     captions[f * fold_captions:(f + 1) * fold_captions],
                     captions_per_image, score_fn, chunk_size)
    per_fold.append(metrics_from_ranks(i2t, t2i))
  result: dict[str, Any] = {
    d: {m: float(np.mean([r[d][m] for r in per_fold])) for m in METRICS} for d in DIRECTIONS}
  result["rsum"] = _rsum(result)
  return result


def protocol_metrics(images: Any, captions: Any, protocol: str, captions_per_image: int = 5,
                     score_fn: str | ScoreFn = "cosine", chunk_size: int = 1024
                     ) -> dict[str, Any]:
  """`retrieval_metrics` under a named protocol ("coco1k", "coco5k", "flickr1k")."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
  spec = PROTOCOLS[protocol]
  images = np.asarray(images)
  if images.ndim >= 1 and images.shape[0] != spec.num_images:
    raise ValueError(
      f"protocol {protocol} needs {spec.num_images} test images, got {images.shape[0]}")
  return retrieval_metrics(images, captions, captions_per_image, score_fn, spec.folds,
                           chunk_size)


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
  """{"i2t_r1": ..., ..., "t2i_meanr": ..., "rsum": ...} for logging."""
  flat = {f"{d}_{m}": float(metrics[d][m]) for d in DIRECTIONS for m in METRICS}
  flat["rsum"] = float(metrics["rsum"])
  return flat


@registry.register("retrieval")
def evaluate_retrieval(task, params, mesh, split: str) -> dict[str, float]:
  """Flat metrics of `task.retrieval_embeddings(params, mesh, split)`.

  The task returns (images [N, D], captions [kN, D], k, score function name or callable).
  """
  images, captions, captions_per_image, score_fn = task.retrieval_embeddings(
    params, mesh, split)
  images, captions = _gather_to_host(images), _gather_to_host(captions)
  return flatten_metrics(
    retrieval_metrics(images, captions, captions_per_image, score_fn=score_fn))


def _rsum(metrics: dict[str, Any]) -> float:
  return float(sum(metrics[d][f"r{k}"] for d in DIRECTIONS for k in RECALLS))


def _gather_to_host(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def _as_float(x: np.ndarray) -> np.ndarray:
  """float32 or float64: half precision would turn near-ties into (pessimistic) ties."""
  if np.issubdtype(x.dtype, np.floating) and x.dtype.itemsize >= 4:
    return x
  return x.astype(np.float32)


def _identity(x: jax.Array) -> jax.Array:
  return x


def _resolve_score_fn(score_fn: str | ScoreFn) -> tuple[Callable, ScoreFn]:
  """(per-row preparation, tile score function); cosine normalises once, then dots."""
  if callable(score_fn):
    return _identity, score_fn
  if score_fn == "cosine":
    return l2_normalize, dot_scores
  if score_fn in SCORE_FNS:
    return _identity, SCORE_FNS[score_fn]
  raise ValueError(f"unknown score function {score_fn!r}; known: {sorted(SCORE_FNS)}")


def _tile_of_step(step: jax.Array, num_chunks: int) -> tuple[jax.Array, jax.Array]:
  """(image chunk, caption chunk) of a step: the C diagonal tiles first, then the rest."""
  off = jnp.maximum(step - num_chunks, 0)
  row = off // max(num_chunks - 1, 1)
  col = off % max(num_chunks - 1, 1)
  col = col + (col >= row)
  diagonal = step < num_chunks
  return jnp.where(diagonal, step, row), jnp.where(diagonal, step, col)


@functools.partial(jax.jit, static_argnames=("k", "chunk", "prepare", "tile_fn"))
def _ranks_jit(images: jax.Array, captions: jax.Array, *, k: int, chunk: int,
               prepare: Callable, tile_fn: ScoreFn) -> tuple[jax.Array, jax.Array]:
  """Pessimistic ranks, one tile of chunk x (k * chunk) scores at a time.

  The last chunk of images (and of captions) is shifted back to end at N, overlapping
  the one before it; a pair is counted only by the tile where both its image and its
  caption are new, so no padding is needed and every pair counts exactly once.
  """
  images, captions = prepare(images), prepare(captions)
  num_images = images.shape[0]
  n, m = chunk, chunk * k
  num_chunks = math.ceil(num_images / n)
  local = jnp.arange(n)

  def step(t, carry):
    true_i2t, true_t2i, count_i2t, count_t2i = carry
    row, col = _tile_of_step(t, num_chunks)
    image_start = jnp.minimum(row * n, num_images - n)
    caption_start = jnp.minimum(col * n, num_images - n) * k
    scores = tile_fn(jax.lax.dynamic_slice_in_dim(images, image_start, n),
                     jax.lax.dynamic_slice_in_dim(captions, caption_start, m))  # [n, m]
    image_ids = image_start + local  # [n]
    caption_ids = caption_start + jnp.arange(m)  # [m]

    # On a diagonal tile (row == col), scores[a, a * k + r] is image a's r-th own caption.
    own_scores = scores.reshape(n, n, k)[local, local]  # [n, k]
    diagonal = row == col
    tile_true_i2t = jnp.where(diagonal, jnp.max(own_scores, axis=1),
                              jax.lax.dynamic_slice_in_dim(true_i2t, image_start, n))
    tile_true_t2i = jnp.where(diagonal, own_scores.reshape(m),
                              jax.lax.dynamic_slice_in_dim(true_t2i, caption_start, m))

    counted = ((image_ids >= row * n)[:, None] & (caption_ids >= col * m)[None, :]
               & (caption_ids[None, :] // k != image_ids[:, None]))  # [n, m]
    nan = jnp.isnan(scores)
    above_i2t = counted & ((scores >= tile_true_i2t[:, None]) | nan
                           | jnp.isnan(tile_true_i2t)[:, None])
    above_t2i = counted & ((scores >= tile_true_t2i[None, :]) | nan
                           | jnp.isnan(tile_true_t2i)[None, :])

    def add(total, start, values):
      size = values.shape[0]
      return jax.lax.dynamic_update_slice_in_dim(
        total, jax.lax.dynamic_slice_in_dim(total, start, size) + values, start, 0)

    return (jax.lax.dynamic_update_slice_in_dim(true_i2t, tile_true_i2t, image_start, 0),
            jax.lax.dynamic_update_slice_in_dim(true_t2i, tile_true_t2i, caption_start, 0),
            add(count_i2t, image_start, jnp.sum(above_i2t, axis=1, dtype=jnp.int32)),
            add(count_t2i, caption_start, jnp.sum(above_t2i, axis=0, dtype=jnp.int32)))

  dtype = jax.eval_shape(tile_fn, images[:n], captions[:m]).dtype
  init = (jnp.zeros(num_images, dtype), jnp.zeros(num_images * k, dtype),
          jnp.zeros(num_images, jnp.int32), jnp.zeros(num_images * k, jnp.int32))
  _, _, count_i2t, count_t2i = jax.lax.fori_loop(0, num_chunks * num_chunks, step, init)
  return count_i2t, count_t2i


def load_embeddings(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, captions) from the arrays of those names in an .npz file; InputError if not."""
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such file")
  try:
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise InputError(f"{path}: not an .npz archive (expected arrays 'images', 'captions')")
    with archive:
      missing = [name for name in ("images", "captions") if name not in archive.files]
      if missing:
        raise InputError(f"{path}: no array named {missing[0]!r} (found: "
                         f"{', '.join(archive.files) or 'none'})")
      return archive["images"], archive["captions"]
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    first_line = (str(e).splitlines() or [type(e).__name__])[0]
    raise InputError(f"{path}: cannot read as .npz: {first_line}") from None


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: prints one JSON object of metrics, or one `error:` line and exits 1."""
  parser = argparse.ArgumentParser(
    prog="python -m mmzoo.eval.retrieval",
    description="Image<->text retrieval metrics (vsepp protocol, pessimistic ties).")
  parser.add_argument("--embeddings", required=True,
                      help=".npz with arrays 'images' [N, D] and 'captions' [kN, D]")
  parser.add_argument("--captions_per_image", type=_positive_int, default=5,
                      help="k: caption j describes image j // k")
  folds = parser.add_mutually_exclusive_group()
  folds.add_argument("--folds", type=_positive_int, default=1,
                     help="evaluate N/F-image folds separately and average the metrics")
  folds.add_argument("--protocol", choices=sorted(PROTOCOLS),
                     help="a published protocol (checks N, sets the folds)")
  parser.add_argument("--score", choices=sorted(SCORE_FNS), default="cosine",
                      help="similarity between an image and a caption")
  parser.add_argument("--chunk_size", type=_positive_int, default=1024,
                      help="images per tile of the score matrix")
  args = parser.parse_args(argv)
  try:
    images, captions = load_embeddings(args.embeddings)
    num_folds = args.folds
    if args.protocol is not None:
      spec = PROTOCOLS[args.protocol]
      if len(images.shape) >= 1 and images.shape[0] != spec.num_images:
        raise InputError(f"{args.embeddings}: protocol {args.protocol} needs "
                         f"{spec.num_images} images, found {images.shape[0]}")
      num_folds = spec.folds
    try:
      check_embeddings(images, captions, args.captions_per_image, num_folds)
    except ValueError as e:
      raise InputError(f"{args.embeddings}: {e}") from None
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  metrics = retrieval_metrics(images, captions, args.captions_per_image, args.score,
                              num_folds, args.chunk_size)
  print(json.dumps(metrics))
  return 0


if __name__ == "__main__":
  sys.exit(main())
