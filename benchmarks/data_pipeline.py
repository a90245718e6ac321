r"""Data-layer speed: building the default shapes datasets, and reading them.

  python benchmarks/data_pipeline.py [--data_dir=DIR] [--kinds=captions,vqa,...]

1. Build: wall time of `launch/prepare_data.py --format=shapes` in-process, per
   dataset (default sizes: 20k/1k/1k images for captions, vqa and personality;
   4k/500/500 stories of 3-5 frames), into a fresh directory. Target: all of
   them in under 2 minutes.
2. Read: images/s of the training pipeline on `shapes/captions` (data source ->
   shuffle -> decode -> tokenize -> pad -> batch of 64), over `--reps` windows
   of `--batches` batches after a warm-up window; the median window counts.
   Target: at least 2000 images/s.
"""

import os
import platform
import statistics
import tempfile
import time

from absl import app, flags

from mmzoo.data import builders, pipeline, tokenizers

DATA_DIR = flags.DEFINE_string("data_dir", None, "Build here (default: a fresh temp dir).")
KINDS = flags.DEFINE_list("kinds", list(builders.SHAPES_KINDS), "Datasets to build.")
BATCH = flags.DEFINE_integer("batch_size", 64, "Images per batch.")
BATCHES = flags.DEFINE_integer("batches", 100, "Batches per timed window.")
REPS = flags.DEFINE_integer("reps", 5, "Timed windows; the median counts.")
THREADS = flags.DEFINE_list("read_threads", ["1", "2"], "grain read threads; one read "
                            "measurement per value.")


def main(argv):
  del argv
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}")
  data_dir = DATA_DIR.value or tempfile.mkdtemp(prefix="mmzoo_bench_")
  total = 0.0
  built = {}
  for kind in KINDS.value:
    start = time.perf_counter()
    built[kind] = builders.prepare(builders.shapes_builder(kind, data_dir))
    seconds = time.perf_counter() - start
    total += seconds
    splits = {s: i.num_examples for s, i in built[kind].info.splits.items()}
    print(f"build shapes/{kind:12s} {seconds:7.1f} s  {splits}", flush=True)
  print(f"build total            {total:7.1f} s  (target < 120 s)")

  builder = built.get("captions") or builders.prepare(builders.shapes_builder("captions",
                                                                             data_dir))
  source = pipeline.data_source(builder, "train")
  vocab = tokenizers.WordVocab.build(
      (c.decode() for i in range(2000) for c in source[i]["captions"]), min_count=1)
  transform = pipeline.caption_transform(vocab, 16, train=True)
  for threads in map(int, THREADS.value):
    batches = pipeline.train_batches(source, transform, BATCH.value, seed=0,
                                     process_index=0, process_count=1, read_threads=threads)
    rates = []
    for rep in range(REPS.value + 1):
      start = time.perf_counter()
      for _ in range(BATCHES.value):
        batch = next(batches)
      seconds = time.perf_counter() - start
      if rep:  # the first window warms up threads and caches
        rates.append(BATCHES.value * BATCH.value / seconds)
    assert batch["image"].shape == (BATCH.value, 64, 64, 3)
    print(f"read shapes/captions train, {threads} read thread(s): median "
          f"{statistics.median(rates):7.0f} images/s over {REPS.value} windows of "
          f"{BATCHES.value} batches of {BATCH.value} (min {min(rates):.0f}, max "
          f"{max(rates):.0f}; target >= 2000)", flush=True)

if __name__ == "__main__":
  app.run(main)
