"""Image decoding and preprocessing.

Any file Pillow can read is accepted. Decoding is forced at once (`Image.load`),
so a truncated JPEG, which opens fine and fails only when its pixels are read,
is caught here and named, rather than reaching a model as garbage. Grayscale,
alpha, palette and 16-bit images become 8-bit RGB, and every image is resized to
a fixed square whatever its aspect ratio (4000x10 and 1x1 included).

Train-time augmentation (random crop and horizontal flip) works on uint8
arrays on the host; normalisation runs on the device, where the model is
(`normalize`), so batches travel as uint8.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import jax.numpy as jnp
import numpy as np
from PIL import Image

from mmzoo.errors import InputError

# ImageNet statistics, as torchvision's pretrained ResNets expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
                  Image.DecompressionBombWarning)


def decode(data: bytes, source: str) -> Image.Image:
  """Decodes encoded image bytes into an RGB PIL image; `source` names them in errors."""
  if not data:
    raise InputError(f"{source}: empty file, not an image")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
      image.load()
      return to_rgb(image)
  except _DECODE_ERRORS as e:
    raise InputError(f"{source}: cannot decode image ({_reason(e)})") from None


def pixels(image, source: str = "record") -> np.ndarray:
  """`<uint8>[H, W, 3]` from encoded bytes (decoded here) or an array (returned as is)."""
  if isinstance(image, bytes | bytearray):
    fast = _plain_png(image)
    if fast is not None:
      return fast
    return np.asarray(decode(bytes(image), source), dtype=np.uint8)
  return np.asarray(image)


# PNG, as `encode` writes it: 8-bit RGB, not interlaced, every row filtered with
# "None" (type 0), so that decoding is one inflate and a reshape, about 2.5x
# faster than Pillow on the shapes images (which are noisy: other filters do not
# shrink them). Any other PNG, and anything malformed, goes through Pillow.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode_plain_png(pixels: np.ndarray) -> bytes:
  height, width, _ = pixels.shape
  rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, width * 3)], 1)
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (_PNG_SIGNATURE + _png_chunk(b"IHDR", header) +
          _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _png_chunk(b"IEND", b""))


def _plain_png(data: bytes) -> np.ndarray | None:
  """The pixels of a PNG in `_encode_plain_png`'s form; None for any other bytes."""
  if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 33:
    return None
  width, height, depth, color, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
  if (depth, color, interlace) != (8, 2, 0) or zlib.crc32(data[12:29]) != struct.unpack_from(
      ">I", data, 29)[0]:
    return None
  parts, pos = [], 33
  while pos + 12 <= len(data):
    (length,), kind = struct.unpack_from(">I", data, pos), data[pos + 4:pos + 8]
    if kind == b"IDAT":
      parts.append(data[pos + 8:pos + 8 + length])
    elif kind == b"IEND":
      break
    pos += 12 + length
  try:
    raw = zlib.decompress(b"".join(parts))
  except zlib.error:
    return None  # Pillow names the problem
  if len(raw) != height * (width * 3 + 1):
    return None
  rows = np.frombuffer(raw, np.uint8).reshape(height, width * 3 + 1)
  if rows[:, 0].any():
    return None
  return np.ascontiguousarray(rows[:, 1:]).reshape(height, width, 3)


def _reason(error: Exception) -> str:
  text = str(error).splitlines()[0] if str(error) else type(error).__name__
  return text.replace(" <_io.BytesIO object at", "").split(" 0x")[0].rstrip(" >")


def to_rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB: alpha is dropped, palettes and grayscale expanded, 16/32-bit rescaled."""
  if image.mode == "RGB":
    return image
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    pixels = np.asarray(image, dtype=np.float64)
    lo, hi = float(pixels.min()), float(pixels.max())
    scaled = (pixels - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(pixels)
    image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
  elif image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  return image.convert("RGB")


def read_file(path: str) -> bytes:
  """The bytes of an image file, or an `InputError` naming what is wrong with it."""
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, not an image")
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise InputError(f"{path}: cannot read ({e.strerror or e})") from None


def resize(image: Image.Image, size: int) -> np.ndarray:
  """`<uint8>[size, size, 3]`: the whole image squeezed to a square (no crop, no padding)."""
  if image.size != (size, size):
    image = image.resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(image, dtype=np.uint8)


def load(path: str, size: int) -> np.ndarray:
  """Reads, decodes and resizes an image file: `<uint8>[size, size, 3]`."""
  return resize(decode(read_file(path), path), size)


def encode(pixels: np.ndarray, image_format: str = "png", quality: int = 95) -> bytes:
  """Encodes `<uint8>[H, W, 3]` as PNG (lossless) or JPEG."""
  if image_format == "png" and pixels.dtype == np.uint8 and pixels.ndim == 3 and (
      pixels.shape[2] == 3):
    return _encode_plain_png(np.ascontiguousarray(pixels))
  buf = io.BytesIO()
  if image_format == "png":
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
  elif image_format == "jpeg":
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
  else:
    raise ValueError(f"unknown image format {image_format!r}; use png or jpeg")
  return buf.getvalue()


def augment(pixels: np.ndarray, rng: np.random.Generator, crop_size: int | None,
            flip: bool) -> np.ndarray:
  """Train-time augmentation of `<uint8>[H, W, 3]`.

  A random `crop_size` square (when set and smaller than the image) and, with
  `flip`, a horizontal flip with probability 1/2. Flipping swaps left and right,
  so it stays off for data whose text names sides (the shapes world's relations).
  """
  height, width = pixels.shape[:2]
  if crop_size and (crop_size < height or crop_size < width):
    top = int(rng.integers(0, height - crop_size + 1))
    left = int(rng.integers(0, width - crop_size + 1))
    pixels = pixels[top:top + crop_size, left:left + crop_size]
  if flip and rng.random() < 0.5:
    pixels = pixels[:, ::-1]
  return np.ascontiguousarray(pixels)


def center_crop(pixels: np.ndarray, crop_size: int | None) -> np.ndarray:
  """The central `crop_size` square, the evaluation-time counterpart of `augment`."""
  height, width = pixels.shape[:2]
  if not crop_size or (crop_size >= height and crop_size >= width):
    return pixels
  top, left = (height - crop_size) // 2, (width - crop_size) // 2
  return np.ascontiguousarray(pixels[top:top + crop_size, left:left + crop_size])


def normalize(pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD):
  """uint8 RGB `[..., 3]` -> float32 `(x / 255 - mean) / std` per channel."""
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  return (jnp.asarray(pixels, jnp.float32) - mean) / (jnp.asarray(std, jnp.float32) * 255.0)
