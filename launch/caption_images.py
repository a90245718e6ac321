r"""Captions image files with a trained captioner, optionally drawing its attention.

  python launch/caption_images.py --workdir=W [--beam_size=K | --temperature=T]
      [--checkpoint=best|latest] [--attention_dir=D] FILE...

Any size and mode Pillow reads is accepted (images are converted to RGB and
resized as in training). Prints `FILE: caption` per image. With
--attention_dir, an attention model also writes D/<name>.png: the image, then
one panel per generated word with that word's attention map over the image
(Show, Attend and Tell's figure). An unreadable file gets one `error: FILE: ...`
line on stderr; the others are still captioned, and the exit code is 1.
"""

import os
import sys

import common
import jax.numpy as jnp
import numpy as np
from absl import flags

from mmzoo import tasks
from mmzoo.data import images
from mmzoo.errors import InputError
from mmzoo.train import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained captioning workdir.", required=True)
_CHECKPOINT = common.checkpoint_flag()
_DECODING = common.decoding_flags()
_ATTENTION_DIR = flags.DEFINE_string("attention_dir", None,
                                     "Write one attention figure per image here.")


def attention_figure(pixels: np.ndarray, words: list[str], attention: np.ndarray):
  """The image and, per word, its attention (`[words, regions]`, a square grid) overlaid."""
  from PIL import Image, ImageDraw

  grid = int(round(np.sqrt(attention.shape[-1])))
  if grid * grid != attention.shape[-1]:
    raise InputError(f"attention over {attention.shape[-1]} regions is not a square grid")
  cell = max(96, pixels.shape[0])
  base = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.BICUBIC)
  panels = len(words) + 1
  canvas = Image.new("RGB", (panels * (cell + 4), cell + 20), "white")
  canvas.paste(base, (0, 0))
  draw = ImageDraw.Draw(canvas)
  for i, (word, alpha) in enumerate(zip(words, attention, strict=False)):
    heat = alpha.reshape(grid, grid)
    heat = heat / max(float(heat.max()), 1e-8)
    mask = Image.fromarray(np.uint8(heat * 255)).resize((cell, cell), Image.Resampling.BILINEAR)
    dark = Image.new("RGB", (cell, cell), "black")
    panel = Image.composite(base, dark, mask)
    x = (i + 1) * (cell + 4)
    canvas.paste(panel, (x, 0))
    draw.text((x + 2, cell + 4), word, fill="black")
  return canvas


def main(argv):
  files = argv[1:]
  if not files:
    raise InputError("give one or more image files to caption")
  task, params, _ = loop.restore_workdir(_WORKDIR.value, tasks.build, None, _CHECKPOINT.value,
                                         _DECODING())
  if not hasattr(task, "decode_method"):
    raise InputError(f"{_WORKDIR.value}: holds a {task.config.task} model, not a captioner")
  if task.precomputed:
    raise InputError(f"{_WORKDIR.value}: this captioner reads precomputed features, not images")
  size = task.config.data.image_size
  loaded, failed = [], 0
  for path in files:
    try:
      loaded.append((path, images.load(path, size)))
    except InputError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      failed += 1
  if loaded:
    pixels = np.stack([task._pixels({"image": p}, None, False) for _, p in loaded])
    sequences, aux = task._decode(params, jnp.asarray(pixels), method=task.decode_method())
    sequences = np.asarray(sequences)
    if _ATTENTION_DIR.value:
      os.makedirs(_ATTENTION_DIR.value, exist_ok=True)
    for row, (path, _) in enumerate(loaded):
      caption = task.tokenizer.decode(sequences[row])
      print(f"{path}: {caption}", flush=True)
      if _ATTENTION_DIR.value:
        if "attention" not in aux:
          raise InputError(f"{task.config.model.name} has no attention to draw")
        words = caption.split()
        figure = attention_figure(pixels[row], words, np.asarray(aux["attention"][row]))
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        figure.save(os.path.join(_ATTENTION_DIR.value, name))
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  common.run(main, positional=True)
