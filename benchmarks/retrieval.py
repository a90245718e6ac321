r"""Time of image<->text retrieval ranks: mmzoo's tiled JAX loop vs vsepp-style NumPy.

The COCO 5K protocol (5000 images x 25000 captions, D=1024, cosine) and the order score
(Vendrov et al. 2016) computed by `mmzoo.eval.retrieval` next to two NumPy references:

- "per-query" (the issue's reference, and the loop of vsepp's `evaluation.py`): for
  each image, its scores against all captions (`d = dot(im, captions.T)`), one
  `argsort`, `np.where(inds == j)` for its own captions; for each image's 5 captions, their
  scores against all images (one [5, N] product), one `argsort` per caption;
- "matrix first", a stronger baseline: the full [N, kN] score matrix in one product,
  then the same argsorts (the order score's matrix is built in blocks of image rows, as
  vsepp does on the GPU, to bound the [rows, kN, D] temporary).

All sides get the same float32 embeddings, and their ranks are checked to agree.

mmzoo is timed twice: its jitted loop on device-resident arrays (`block_until_ready`),
and the public `ranks()` from host NumPy arrays to host NumPy ranks (input checks and
transfers included). Compilation and `--warmup` calls are not timed; the median of
`--reps` calls is reported, the calls going round-robin between the implementations so
that a slow spell of a shared machine hits each. The order score costs N x kN x D
operations with no matrix product to lean on, so it runs at the sizes in
`--order_images` (NumPy only up to `--numpy_max_order_images`).

  python benchmarks/retrieval.py                       # a few minutes on 2 cores
  python benchmarks/retrieval.py --reps=5 --order_images=1000,5000
  python benchmarks/retrieval.py --images=0 --order_images=5000 --reps=1  # ~2 min
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from machine import cpu_name

from mmzoo.eval import retrieval

IMAGES = flags.DEFINE_integer("images", 5000, "Images of the cosine benchmark (COCO 5K; 0: none).")
CAPTIONS = flags.DEFINE_integer("captions_per_image", 5, "k: captions per image.")
DIM = flags.DEFINE_integer("dim", 1024, "Embedding dimension.")
CHUNK = flags.DEFINE_integer("chunk_size", 1024, "mmzoo's images per tile.")
ORDER_IMAGES = flags.DEFINE_list("order_images", ["1000"],
                                 "Image counts of the order-score benchmark.")
NUMPY_MAX_ORDER = flags.DEFINE_integer(
  "numpy_max_order_images", 1000, "Largest order-score size also run in NumPy (slow).")
REPS = flags.DEFINE_integer("reps", 3, "Timed calls per implementation; the median counts.")
WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls after compilation (mmzoo).")


def embeddings(n: int, k: int, dim: int, order: bool, seed: int = 0):
  """Images and k noisy captions each, of a model neither perfect nor useless.

  For the order score, non-negative captions that lie roughly below their image
  (coordinates shrunk, plus noise that breaks the order); else unit-norm vectors.
  """
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((n, dim), dtype=np.float32)
  if order:
    images = np.abs(images)
    shrink = rng.uniform(0.5, 1.0, (n * k, dim)).astype(np.float32)
    noise = np.abs(rng.standard_normal((n * k, dim), dtype=np.float32))
    return images, np.repeat(images, k, axis=0) * shrink + 2.5 * noise
  captions = np.repeat(images, k, axis=0) + 8.0 * rng.standard_normal((n * k, dim),
                                                                      dtype=np.float32)
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  captions /= np.linalg.norm(captions, axis=1, keepdims=True)
  return images, captions


def numpy_cosine_sim(images, captions):
  images = images / np.linalg.norm(images, axis=1, keepdims=True)
  captions = captions / np.linalg.norm(captions, axis=1, keepdims=True)
  return images @ captions.T


def _dot_sim(images, captions):
  return images @ captions.T


def numpy_order_sim(images, captions, rows: int = 4):
  scores = np.empty((images.shape[0], captions.shape[0]), np.float32)
  for start in range(0, images.shape[0], rows):
    diff = np.maximum(captions[None] - images[start:start + rows, None], 0.0)
    scores[start:start + rows] = -np.sqrt(np.einsum("bmd,bmd->bm", diff, diff))
  return scores


def _vsepp_ranks(n: int, k: int, image_row, caption_block) -> tuple[np.ndarray, np.ndarray]:
  """vsepp's i2t / t2i loops: an argsort per query, np.where per true item. `image_row(i)`
  gives image i's scores against all captions ([kN]), `caption_block(i)` its k
  captions' scores against all images ([k, N])."""
  i2t = np.zeros(n, np.int64)
  for i in range(n):
    inds = np.argsort(image_row(i))[::-1]
    i2t[i] = min(np.where(inds == j)[0][0] for j in range(k * i, k * i + k))
  t2i = np.zeros(k * n, np.int64)
  for i in range(n):
    d = caption_block(i)
    for r in range(k):
      inds = np.argsort(d[r])[::-1]
      t2i[k * i + r] = np.where(inds == i)[0][0]
  return i2t, t2i


def numpy_ranks_per_query(images, captions, k: int, sim) -> tuple[np.ndarray, np.ndarray]:
  """vsepp's loops with each query's scores computed when it is ranked.

  Cosine embeddings are normalised once, up front (vsepp's encoders return them
  normalised), so each query costs one product.
  """
  if sim is numpy_cosine_sim:
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    captions = captions / np.linalg.norm(captions, axis=1, keepdims=True)
    sim = _dot_sim
  return _vsepp_ranks(images.shape[0], k, lambda i: sim(images[i:i + 1], captions)[0],
                      lambda i: sim(images, captions[k * i:k * i + k]).T)


def numpy_ranks(images, captions, k: int, sim) -> tuple[np.ndarray, np.ndarray]:
  """vsepp's loops over the full score matrix, computed first."""
  scores = sim(images, captions)  # [N, kN]
  by_caption = np.ascontiguousarray(scores.T)  # [kN, N]
  return _vsepp_ranks(images.shape[0], k, lambda i: scores[i],
                      lambda i: by_caption[k * i:k * i + k])


def bench(name: str, n: int, score: str, numpy_sim) -> tuple:
  k = CAPTIONS.value
  images, captions = embeddings(n, k, DIM.value, order=score == "order")
  prepare, tile_fn = retrieval._resolve_score_fn(score)
  chunk = min(CHUNK.value, n)
  device_images, device_captions = jax.device_put(images), jax.device_put(captions)

  def jitted():
    return jax.block_until_ready(retrieval._ranks_jit(
      device_images, device_captions, k=k, chunk=chunk, prepare=prepare, tile_fn=tile_fn))

  def public():
    return retrieval.ranks(images, captions, k, score, CHUNK.value)

  start = time.perf_counter()
  jitted()  # Compiles.
  compile_s = time.perf_counter() - start
  for _ in range(WARMUP.value):
    jitted()
  runs = {"jit": jitted, "public": public}
  if numpy_sim is not None:
    runs["numpy"] = lambda: numpy_ranks(images, captions, k, numpy_sim)
    runs["per_query"] = lambda: numpy_ranks_per_query(images, captions, k, numpy_sim)
  # Round-robin, so that a slow spell of a shared machine hits every implementation.
  times = {impl: [] for impl in runs}
  outputs = {}
  for _ in range(REPS.value):
    for impl, run in runs.items():
      start = time.perf_counter()
      outputs[impl] = run()
      times[impl].append(time.perf_counter() - start)
  jit_s, public_s = statistics.median(times["jit"]), statistics.median(times["public"])
  numpy_s = per_query_s = agree = None
  if numpy_sim is not None:
    numpy_s = statistics.median(times["numpy"])
    per_query_s = statistics.median(times["per_query"])
    ours = np.concatenate(outputs["public"])
    agree = ""
    for impl in ("numpy", "per_query"):
      theirs = np.concatenate(outputs[impl])
      differ = ours != theirs
      agree += (f" {impl}: {int(differ.sum())} of {ours.size}"
                + (f" (max |difference| {int(np.abs(ours - theirs).max())}, float32 "
                   "near-ties)" if differ.any() else ""))
  metrics = retrieval.metrics_from_ranks(*public())
  print(f"{name}: first call (compiles) {compile_s:.1f} s; mmzoo i2t R@1 "
        f"{metrics['i2t']['r1']:.1f}, t2i R@1 {metrics['t2i']['r1']:.1f}"
        + ("" if agree is None else f"; ranks that differ from NumPy's: {agree}"), flush=True)
  return name, n, k * n, jit_s, public_s, numpy_s, per_query_s


def _cells(seconds: float | None, jit_s: float, width: int) -> str:
  """A NumPy time and its speed-up over mmzoo's, or dashes."""
  if seconds is None:
    return f"{'-':>{width}} | {'-':>8}"
  return f"{seconds:{width}.2f} | {seconds / jit_s:7.1f}x"


def main(argv):
  del argv
  cores = os.cpu_count() or 1
  mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  print(f"machine: {cpu_name()}, {cores} cores, "
        f"{mem_gib:.0f} GiB; python {platform.python_version()}, jax {jax.__version__} "
        f"({jax.default_backend()}: {jax.devices()[0].device_kind}), numpy {np.__version__}")
  print(f"D={DIM.value}, k={CAPTIONS.value}, float32, chunk_size={CHUNK.value}; median of "
        f"{REPS.value} calls, compile and {WARMUP.value} warm-up call(s) excluded; "
        f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
  rows = []
  if IMAGES.value:
    rows.append(
      bench(f"cosine, {IMAGES.value} images", IMAGES.value, "cosine", numpy_cosine_sim))
  for n in (int(x) for x in ORDER_IMAGES.value if int(x)):
    numpy_sim = numpy_order_sim if n <= NUMPY_MAX_ORDER.value else None
    rows.append(bench(f"order, {n} images", n, "order", numpy_sim))
  print(f"load average after: {os.getloadavg()[0]:.2f}")
  print()
  print(f"| {'score, size':<20} | {'captions':>8} | {'mmzoo jit s':>11} | {'mmzoo ranks() s':>15} "
        f"| {'numpy per-query s':>17} | {'speed-up':>8} | {'numpy matrix-first s':>20} "
        f"| {'speed-up':>8} |")
  print(f"|{'-' * 22}|{'-' * 9}:|{'-' * 12}:|{'-' * 16}:|{'-' * 18}:|{'-' * 9}:|{'-' * 21}:"
        f"|{'-' * 9}:|")
  for name, _, num_captions, jit_s, public_s, numpy_s, per_query_s in rows:
    print(f"| {name:<20} | {num_captions:>8} | {jit_s:11.2f} | {public_s:15.2f} "
          f"| {_cells(per_query_s, jit_s, 17)} | {_cells(numpy_s, jit_s, 20)} |")


if __name__ == "__main__":
  app.run(main)
