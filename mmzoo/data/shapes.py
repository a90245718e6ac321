"""The built-in shapes world: coloured shapes on a dark ground, and text that is true of them.

Every multimodal task trains on this world by default (DESIGN.md, "The built-in world").
An example is a `Scene` (1 to 4 objects, each a shape, a colour, a size and a position)
rendered to an RGB image, with text generated from the same scene: COCO-style paraphrased
captions, VQA-style questions with short answers, comments in personality styles, and
multi-frame stories told in several prose styles. The scene travels with the example as
JSON, so evaluation can check generated text against the truth (`mmzoo.eval.grounding`).

Everything is a pure function of `(config.seed, split, index)`: each consumer draws from its
own `np.random.default_rng`, seeded by a BLAKE2 digest of those values and a purpose tag,
so that changing how captions are drawn never changes the images.

Geometry. Positions are object centres in [0, 1], y growing downward. An object's extent is
a disc of radius `RADIUS[size]`; objects never overlap. A relation "a <rel> b" holds
*clearly* (`relation_holds(..., strict=True)`, what `Scene.relations`, captions and answers
use) when, for left of / right of / above / below, b is at least `MARGIN` away from a along
the relation's axis and at most `SLOPE` times that across it (not diagonal, where "above"
and "left of" compete), and for next to when the gap between their discs is at most
`NEXT_TO_GAP`. Evaluation asks only that a stated relation is not false (`strict=False`):
the centre is on the stated side, or the gap is at most `NEXT_TO_GAP_LENIENT`. Every clear
relation is also true in that looser sense.

Picture some examples before reading them:

  python -m mmzoo.data.shapes --show 16 --out grid.png [--split train] [--image_size 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import textwrap
from collections.abc import Callable, Hashable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmzoo.errors import InputError

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below", "next to")
PERSONALITIES = ("Happy", "Sad", "Sarcastic", "Romantic", "Scholarly", "Anxious", "Sweet",
                 "Arrogant", "Dramatic", "Poetic", "Curious", "Grumpy")
STORY_STYLES = ("report", "fairytale", "romance")
QUESTION_TYPES = ("colour", "shape", "size", "count", "exists", "relation")

# Words the generator uses, by canonical name: (singular, plural) for nouns. The grounding
# parser (mmzoo.eval.grounding) understands all of these and the PARSER_ONLY_* extras.
SHAPE_WORDS = {
  "circle": (("circle", "circles"), ("disc", "discs")),
  "square": (("square", "squares"), ("box", "boxes")),
  "triangle": (("triangle", "triangles"),),
  "star": (("star", "stars"),),
  "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
  "cross": (("cross", "crosses"),),
}
COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"purple": ("purple", "violet")}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
GENERIC_NOUNS = (("shape", "shapes"), ("object", "objects"), ("thing", "things"))
RELATION_PHRASES = {
  "left of": ("left of", "to the left of", "on the left of"),
  "right of": ("right of", "to the right of", "on the right of"),
  "above": ("above", "over"),
  "below": ("below", "under", "beneath"),
  "next to": ("next to", "beside", "near", "close to"),
}
PARSER_ONLY_SHAPE_WORDS = {"circle": (("disk", "disks"),), "diamond": (("rhombus", "rhombi"),)}
PARSER_ONLY_SIZE_WORDS = {"small": ("tiny",), "large": ("huge",)}
PARSER_ONLY_GENERIC_NOUNS = (("one", "ones"), ("item", "items"), ("figure", "figures"))
PARSER_ONLY_RELATION_PHRASES = {
  "left of": ("left side of", "to the left side of", "on the left side of"),
  "right of": ("right side of", "to the right side of", "on the right side of"),
  "above": ("on top of",),
  "below": ("underneath",),
  "next to": ("alongside", "adjacent to"),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")

# Colours chosen to stay apart after resizing and JPEG: distinct hues, high saturation.
RGB = {
  "red": (225, 35, 35), "orange": (255, 140, 0), "yellow": (245, 225, 30),
  "green": (40, 185, 55), "cyan": (30, 215, 225), "blue": (45, 85, 245),
  "purple": (165, 60, 220), "white": (240, 240, 240),
}
RADIUS = {"small": 0.1, "large": 0.17}  # an object's extent, in image widths
MARGIN = 0.15  # a directional relation holds clearly from this offset along its axis
SLOPE = 0.8  # ... and with at most this much offset across it per unit along (no diagonals)
NEXT_TO_GAP = 0.12  # largest gap between discs for a clear "next to"
NEXT_TO_GAP_LENIENT = 0.2  # largest gap for a "next to" that is not false
NOT_NEXT_TO_GAP = 0.3  # smallest gap for a clear "not next to"
_MIN_GAP = 0.03  # smallest gap between objects' discs
_MAX_OBJECTS = 6


@dataclasses.dataclass(frozen=True)
class Object:
  """One object: `x`, `y` are its centre in [0, 1], y growing downward."""

  shape: str
  colour: str
  size: str
  x: float
  y: float

  @property
  def radius(self) -> float:
    return RADIUS[self.size]

  def name(self) -> str:
    """'colour shape', e.g. 'red circle': the short answer naming this object."""
    return f"{self.colour} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
  """The ground truth of one image."""

  objects: tuple[Object, ...]

  def to_json(self) -> str:
    return json.dumps({"objects": [dataclasses.asdict(o) for o in self.objects]},
                      separators=(",", ":"))

  @classmethod
  def from_json(cls, s: str) -> Scene:
    try:
      data = json.loads(s)
      objects = tuple(Object(shape=str(o["shape"]), colour=str(o["colour"]), size=str(o["size"]),
                             x=float(o["x"]), y=float(o["y"])) for o in data["objects"])
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(f"not a shapes scene: {s[:80]!r} ({e})") from e
    for o in objects:
      if o.shape not in SHAPES or o.colour not in COLOURS or o.size not in SIZES:
        raise InputError(f"not a shapes scene: unknown attribute in {o}")
    return cls(objects)

  def relations(self) -> list[tuple[int, str, int]]:
    """Every `(i, relation, j)` with i != j such that object i clearly is `relation` object j."""
    return [(i, rel, j) for i, a in enumerate(self.objects) for j, b in enumerate(self.objects)
            if i != j for rel in RELATIONS if relation_holds(a, rel, b)]

  def matching(self, size: str | None = None, colour: str | None = None,
               shape: str | None = None) -> list[int]:
    """Indices of the objects with the given attributes (None: any)."""
    return [i for i, o in enumerate(self.objects)
            if (size is None or o.size == size) and (colour is None or o.colour == colour)
            and (shape is None or o.shape == shape)]


def relation_holds(a: Object, relation: str, b: Object, strict: bool = True) -> bool:
  """Whether `a <relation> b`: clearly (`strict`) or merely not falsely (see module docstring)."""
  dx, dy = b.x - a.x, b.y - a.y
  if relation == "next to":
    gap = math.hypot(dx, dy) - a.radius - b.radius
    return gap <= (NEXT_TO_GAP if strict else NEXT_TO_GAP_LENIENT)
  if relation == "left of":
    along, across = dx, dy
  elif relation == "right of":
    along, across = -dx, dy
  elif relation == "above":
    along, across = dy, dx
  elif relation == "below":
    along, across = -dy, dx
  else:
    raise ValueError(f"unknown relation {relation!r}; known: {RELATIONS}")
  if strict:
    return along >= MARGIN and abs(across) <= SLOPE * along
  return along > 0


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def relation_clearly_false(a: Object, relation: str, b: Object) -> bool:
  """Whether `a <relation> b` is clearly false: the opposite holds clearly, or they are far."""
  if relation == "next to":
    return math.hypot(b.x - a.x, b.y - a.y) - a.radius - b.radius >= NOT_NEXT_TO_GAP
  return relation_holds(a, _OPPOSITE[relation], b)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """What the world looks like; every field changes the data, so it belongs in a run's config."""

  seed: int = 0  # world seed: the same (seed, split, index) always gives the same example
  image_size: int = 64  # images are [image_size, image_size, 3] uint8
  min_objects: int = 1  # objects per scene, inclusive range
  max_objects: int = 4
  clutter: float = 0.5  # 0: plain background; 1: many faint lines and specks
  noise: float = 0.03  # standard deviation of Gaussian pixel noise, as a fraction of 255
  supersample: int = 0  # draw at this multiple and downsample; 0: automatic (about 256 px)
  num_captions: int = 5  # captions per image
  num_questions: int = 6  # question/answer pairs per image (fewer if a scene has no more)
  story_frames: tuple[int, int] = (3, 5)  # frames per story, inclusive range

  def __post_init__(self):
    if not 8 <= self.image_size <= 1024:
      raise InputError(f"image_size={self.image_size}: must be in [8, 1024]")
    if not 1 <= self.min_objects <= self.max_objects <= _MAX_OBJECTS:
      raise InputError(f"min_objects={self.min_objects}, max_objects={self.max_objects}: need "
                       f"1 <= min_objects <= max_objects <= {_MAX_OBJECTS}")
    if not (0 <= self.clutter <= 1 and 0 <= self.noise <= 1):
      raise InputError(f"clutter={self.clutter}, noise={self.noise}: must be in [0, 1]")
    if not 0 <= self.supersample <= 8:
      raise InputError(f"supersample={self.supersample}: must be in [0, 8]")
    if self.num_captions < 1 or self.num_questions < 1:
      raise InputError("num_captions and num_questions must be positive")
    lo, hi = self.story_frames
    if not 2 <= lo <= hi <= 10:
      raise InputError(f"story_frames={self.story_frames}: need 2 <= min <= max <= 10")


# ---------------------------------------------------------------------------------------------
# Randomness


def _rng(seed: int, *parts: Hashable) -> np.random.Generator:
  """A generator seeded by a digest of the parts: stable across runs, machines and versions."""
  key = "\x1f".join(str(p) for p in (seed, *parts)).encode()
  return np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(),
                                              "little"))


class _Draws:
  """Uniform draws from one numpy generator, consumed in Python (a numpy call per pick is slow)."""

  def __init__(self, rng: np.random.Generator, block: int = 64):
    self._rng, self._block = rng, block
    self._buf: list[float] = []
    self._i = 0

  def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
    if self._i == len(self._buf):
      self._buf, self._i = self._rng.random(self._block).tolist(), 0
    u = self._buf[self._i]
    self._i += 1
    return lo + (hi - lo) * u

  def integer(self, lo: int, hi: int) -> int:
    """An integer in [lo, hi], inclusive."""
    return min(hi, lo + int(self.uniform() * (hi - lo + 1)))

  def choice(self, seq: Sequence):
    return seq[min(len(seq) - 1, int(self.uniform() * len(seq)))]

  def chance(self, p: float) -> bool:
    return self.uniform() < p

  def shuffled(self, seq: Sequence) -> list:
    out = list(seq)
    for i in range(len(out) - 1, 0, -1):
      j = self.integer(0, i)
      out[i], out[j] = out[j], out[i]
    return out


def _draws(config: WorldConfig, split: str, index: int, purpose: str) -> _Draws:
  return _Draws(_rng(config.seed, split, index, purpose))


# ---------------------------------------------------------------------------------------------
# Scenes


def _fits(x: float, y: float, r: float, others: Sequence[Object]) -> bool:
  return all(math.hypot(x - o.x, y - o.y) >= r + o.radius + _MIN_GAP for o in others)


def _place(d: _Draws, size: str, others: Sequence[Object], tries: int = 60
           ) -> tuple[float, float] | None:
  r = RADIUS[size]
  lo, hi = r + 0.02, 1 - r - 0.02
  for _ in range(tries):
    x, y = round(d.uniform(lo, hi), 3), round(d.uniform(lo, hi), 3)
    if _fits(x, y, r, others):
      return x, y
  return None


def _sample_scene(d: _Draws, num_objects: int, distinct: bool = False) -> Scene:
  """Rejection-samples positions; some objects repeat an earlier shape (and colour) so that
  scenes have things to count. `distinct`: no two objects share colour and shape."""
  for attempt in range(40):
    objects: list[Object] = []
    while len(objects) < num_objects:
      if objects and d.chance(0.3):
        shape = d.choice(objects).shape
        colour = d.choice(objects).colour if d.chance(0.4) else d.choice(COLOURS)
      else:
        shape, colour = d.choice(SHAPES), d.choice(COLOURS)
      if distinct and any(o.shape == shape and o.colour == colour for o in objects):
        continue
      size = "small" if attempt >= 20 else d.choice(SIZES)
      xy = _place(d, size, objects)
      if xy is None:
        break
      objects.append(Object(shape, colour, size, *xy))
    if len(objects) == num_objects:
      return Scene(tuple(objects))
  raise RuntimeError(f"could not place {num_objects} objects")  # unreachable for <= 6


def scene(split: str, index: int, config: WorldConfig = WorldConfig()) -> Scene:
  """The scene of example `index` of `split`."""
  d = _draws(config, split, index, "scene")
  return _sample_scene(d, d.integer(config.min_objects, config.max_objects))


# ---------------------------------------------------------------------------------------------
# Rendering


def _outline(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
  """Polygon of a non-circle shape inscribed (roughly) in a disc of radius r, rotated by turn."""
  if shape == "square":
    pts = [(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)]
  elif shape == "diamond":
    pts = [(0, -1.0), (0.66, 0), (0, 1.0), (-0.66, 0)]
  elif shape == "triangle":
    pts = [(1.05 * math.sin(a), -1.05 * math.cos(a) + 0.12)
           for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
  elif shape == "star":
    pts = [((1.05 if k % 2 == 0 else 0.48) * math.sin(k * math.pi / 5),
            -(1.05 if k % 2 == 0 else 0.48) * math.cos(k * math.pi / 5) + 0.05) for k in range(10)]
  elif shape == "cross":
    a, b = 0.3, 0.92
    pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
           (-b, a), (-b, -a), (-a, -a)]
  else:
    raise ValueError(f"unknown shape {shape!r}")
  c, s = math.cos(turn), math.sin(turn)
  return [(cx + r * (px * c - py * s), cy + r * (px * s + py * c)) for px, py in pts]


def _supersample(config: WorldConfig) -> int:
  if config.supersample:
    return config.supersample
  return max(2, min(4, -(-256 // config.image_size)))


def render(scene: Scene, config: WorldConfig = WorldConfig(),
           rng_key: Sequence[Hashable] | None = None) -> np.ndarray:
  """Draws a scene: `<uint8>[image_size, image_size, 3]`.

  Background tint, clutter, small jitters of each object's colour, size and angle, and pixel
  noise are drawn from `rng_key` (usually `(split, index)`; default: the scene itself), so the
  same scene and key always give the same bytes.
  """
  key = tuple(rng_key) if rng_key is not None else ("scene", scene.to_json())
  rng = _rng(config.seed, *key, "render")
  d = _Draws(rng)
  size = config.image_size
  k = _supersample(config)
  side = size * k
  base = d.uniform(18, 34)
  background = (round(base), round(base + d.uniform(-4, 4)), round(base + d.uniform(0, 10)))
  image = Image.new("RGB", (side, side), background)
  draw = ImageDraw.Draw(image)
  # Clutter: faint lines and specks, greyish and dimmer than any object.
  for _ in range(round(config.clutter * 8)):
    tone = round(base + d.uniform(14, 34))
    x0, y0, x1, y1 = (d.uniform(0, side) for _ in range(4))
    draw.line([(x0, y0), (x1, y1)], fill=(tone, tone, tone + 4), width=max(1, round(k * 0.5)))
  for _ in range(round(config.clutter * 16)):
    tone = round(base + d.uniform(18, 42))
    x, y, r = d.uniform(0, side), d.uniform(0, side), k * d.uniform(0.3, 0.7)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=(tone, tone, tone))
  for o in scene.objects:
    r = o.radius * side * d.uniform(0.88, 1.0)
    cx, cy = o.x * side, o.y * side
    shade = d.uniform(-12, 12)  # mostly brightness, so that white stays white
    fill = tuple(min(255, max(0, round(c + shade + d.uniform(-5, 5)))) for c in RGB[o.colour])
    if o.shape == "circle":
      r *= 0.92
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
      draw.polygon(_outline(o.shape, cx, cy, r, d.uniform(-0.17, 0.17)), fill=fill)
  if k > 1:
    image = image.reduce(k)
  pixels = np.asarray(image)
  if config.noise > 0:
    noise = rng.standard_normal(pixels.shape, dtype=np.float32) * (config.noise * 255)
    pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
  return np.ascontiguousarray(pixels)


# ---------------------------------------------------------------------------------------------
# Referring to objects


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _cap(text: str) -> str:
  return text[:1].upper() + text[1:]


def _number(n: int) -> str:
  return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def _noun(d: _Draws, shape: str | None, plural: bool = False) -> str:
  pairs = SHAPE_WORDS[shape] if shape else GENERIC_NOUNS
  return d.choice(pairs)[1 if plural else 0]


# Which attributes a description names: (size, colour, shape).
_FULL, _COLOUR_SHAPE, _SIZE_SHAPE, _SHAPE, _COLOUR = ((1, 1, 1), (0, 1, 1), (1, 0, 1), (0, 0, 1),
                                                      (0, 1, 0))


def _describe(d: _Draws, o: Object, fields: tuple[int, int, int], plural: bool = False) -> str:
  words = []
  if fields[0]:
    words.append(d.choice(SIZE_WORDS[o.size]))
  if fields[1]:
    words.append(d.choice(COLOUR_WORDS[o.colour]))
  words.append(_noun(d, o.shape if fields[2] else None, plural))
  return " ".join(words)


def _spec(o: Object, fields: tuple[int, int, int]) -> tuple[str | None, str | None, str | None]:
  return (o.size if fields[0] else None, o.colour if fields[1] else None,
          o.shape if fields[2] else None)


def _unique(s: Scene, o: Object, fields: tuple[int, int, int]) -> bool:
  return len(s.matching(*_spec(o, fields))) == 1


def _np(d: _Draws, s: Scene, o: Object, fields: tuple[int, int, int]) -> str:
  """A noun phrase for one object: 'the ...' when the description is unique, else 'a ...'."""
  text = _describe(d, o, fields)
  return f"the {text}" if _unique(s, o, fields) else f"{_article(text)} {text}"


def _a(d: _Draws, o: Object, fields: tuple[int, int, int]) -> str:
  text = _describe(d, o, fields)
  return f"{_article(text)} {text}"


def _listing(parts: Sequence[str]) -> str:
  if len(parts) == 1:
    return parts[0]
  return ", ".join(parts[:-1]) + " and " + parts[-1]


def _groups(s: Scene, key: Callable[[Object], tuple]) -> dict[tuple, int]:
  counts: dict[tuple, int] = {}
  for o in s.objects:
    counts[key(o)] = counts.get(key(o), 0) + 1
  return counts


# ---------------------------------------------------------------------------------------------
# Captions


def _caption_candidates(s: Scene, d: _Draws) -> dict[str, list[str]]:
  """Candidate captions by family; every one is true of the scene."""
  objs = s.objects
  n = len(objs)
  order = d.shuffled(range(n))
  fam: dict[str, list[str]] = {k: [] for k in ("list", "count", "relation", "focus", "predicate")}
  detail = d.choice((_FULL, _COLOUR_SHAPE, _FULL))
  items = [_a(d, objs[i], detail) for i in order]
  items_short = [_a(d, objs[i], _COLOUR_SHAPE) for i in order]
  listing = _listing(items)
  short = _listing(items_short)
  fam["list"] += [
    _cap(listing) + ".",
    f"There is {short} in the picture.",
    f"{_cap(d.choice(('an image of', 'a picture of', 'a drawing of')))} {listing}.",
    f"{_cap(short)} on a dark background.",
    f"{d.choice(('This picture shows', 'We can see', 'The image contains'))} {short}.",
  ]
  if n == 1:
    o = objs[0]
    fam["count"] += [
      f"A single {_describe(d, o, _FULL)}.",
      f"Just one {_noun(d, None)}: {_a(d, o, d.choice((_FULL, _COLOUR_SHAPE)))}.",
      f"Only {_a(d, o, _FULL)} on a dark background.",
    ]
  else:
    generic = _noun(d, None, plural=True)
    fam["count"] += [
      f"{_cap(_number(n))} {generic}: {short}.",
      f"There are {_number(n)} {generic} in this image.",
      f"{_cap(_number(n))} {generic}, including {_a(d, objs[order[0]], _FULL)}.",
    ]
    by_type = _groups(s, lambda o: (o.colour, o.shape))
    parts = []
    for (colour, shape), count in sorted(by_type.items(), key=lambda kv: -kv[1]):
      colour_word = d.choice(COLOUR_WORDS[colour])
      noun = _noun(d, shape, plural=count > 1)
      parts.append(f"{_number(count) if count > 1 else _article(colour_word)} {colour_word} {noun}")
    if len(parts) < n:  # something repeats: say how many
      fam["count"].append(_cap(_listing(parts)) + ".")
    by_shape = _groups(s, lambda o: (o.shape,))
    repeated = [(shape, count) for (shape,), count in by_shape.items() if count > 1]
    if repeated:
      shape, count = d.choice(repeated)
      if count < n:
        fam["count"].append(f"There are {_number(count)} {_noun(d, shape, plural=True)} among "
                            f"the {_number(n)} {_noun(d, None, plural=True)}.")
      else:
        fam["count"].append(f"All {_number(n)} {_noun(d, None, plural=True)} are "
                            f"{_noun(d, shape, plural=True)}.")
      colours = [o.colour for o in objs if o.shape == shape]
      if len(set(colours)) == len(colours):
        fam["count"].append(f"{_cap(_number(count))} {_noun(d, shape, plural=True)}: "
                            f"{_listing(colours)}.")
  rels = s.relations()
  for i, rel, j in d.shuffled(rels)[:4]:
    a_fields = d.choice((_FULL, _COLOUR_SHAPE, _COLOUR_SHAPE, _SHAPE))
    b_fields = d.choice((_FULL, _COLOUR_SHAPE, _COLOUR_SHAPE, _SHAPE))
    a, b = _np(d, s, objs[i], a_fields), _np(d, s, objs[j], b_fields)
    phrase = d.choice(RELATION_PHRASES[rel])
    form = d.integer(0, 4)
    if form == 0:
      text = f"{_cap(a)} is {phrase} {b}."
    elif form == 1:
      verb = d.choice(("sits", "lies", "appears", "can be seen", "is placed"))
      text = f"{_cap(a)} {verb} {phrase} {b}."
    elif form == 2:
      verb = d.choice(("there is", "sits", "is", "we see"))
      if verb == "we see":
        text = f"{_cap(phrase)} {b} we see {a}."
      else:
        text = f"{_cap(phrase)} {b} {verb} {a}."
    elif form == 3 and rel == "next to":
      text = f"{_cap(a)} and {b} are {d.choice(('next to', 'near', 'close to'))} each other."
    else:
      text = f"There is {_a(d, objs[i], a_fields)} {phrase} {b}."
    fam["relation"].append(text)
  if len(rels) >= 2:
    (i, r1, j), (k, r2, m) = d.shuffled(rels)[:2]
    fam["relation"].append(
      f"{_cap(_np(d, s, objs[i], _COLOUR_SHAPE))} is {d.choice(RELATION_PHRASES[r1])} "
      f"{_np(d, s, objs[j], _COLOUR_SHAPE)}, and {_np(d, s, objs[k], _SHAPE)} is "
      f"{d.choice(RELATION_PHRASES[r2])} {_np(d, s, objs[m], _SHAPE)}.")
  focus = objs[order[0]]
  fam["focus"] += [
    f"{_cap(_a(d, focus, _FULL))} on a dark background.",
    f"A close look at {_a(d, focus, _FULL)}.",
  ]
  if n > 1:
    fam["focus"].append(f"Among the {_noun(d, None, plural=True)} is {_a(d, focus, _FULL)}.")
  for o in (objs[i] for i in order):
    if _unique(s, o, _SHAPE):
      colour = d.choice(COLOUR_WORDS[o.colour])
      size = d.choice(SIZE_WORDS[o.size])
      noun = _noun(d, o.shape)
      fam["predicate"] += [f"The {noun} is {colour}.", f"The {noun} is {size} and {colour}."]
    if _unique(s, o, _COLOUR):
      what = _a(d, o, d.choice((_SHAPE, _SIZE_SHAPE)))
      fam["predicate"].append(f"The {_describe(d, o, _COLOUR)} is {what}.")
  return fam


def captions(scene: Scene, split: str, index: int, config: WorldConfig = WorldConfig()
             ) -> list[str]:
  """`config.num_captions` distinct captions, 4 to 20 words, all true of the scene.

  Families (listing, counts, relations, one object in focus, predicates) are drawn in turn,
  relations first when the scene has any, so each image gets varied grammar.
  """
  d = _draws(config, split, index, "captions")
  fam = _caption_candidates(scene, d)
  pools = {k: [c for c in d.shuffled(v) if 4 <= len(c.split()) <= 20] for k, v in fam.items()}
  order = ["relation"] + d.shuffled(["list", "count", "focus", "predicate"])
  chosen: list[str] = []
  while len(chosen) < config.num_captions and any(pools.values()):
    for k in order:
      while pools[k]:
        c = pools[k].pop()
        if c not in chosen:
          chosen.append(c)
          break
      if len(chosen) == config.num_captions:
        break
  return chosen


# ---------------------------------------------------------------------------------------------
# Questions


def _question_candidates(s: Scene, d: _Draws) -> dict[str, list[tuple[str, str]]]:
  objs = s.objects
  q: dict[str, list[tuple[str, str]]] = {t: [] for t in QUESTION_TYPES}
  for o in objs:
    for fields in (_SHAPE, _SIZE_SHAPE):
      if _unique(s, o, fields):
        thing = _describe(d, o, fields)
        q["colour"].append((d.choice((f"What color is the {thing}?",
                                      f"What is the color of the {thing}?",
                                      f"Which color does the {thing} have?")), o.colour))
        break
    for fields in (_COLOUR, (1, 1, 0)):
      if _unique(s, o, fields):
        thing = _describe(d, o, fields)
        q["shape"].append((d.choice((f"What shape is the {thing}?",
                                     f"What is the shape of the {thing}?",
                                     f"Which shape is {d.choice(COLOUR_WORDS[o.colour])}?")
                                    if fields == _COLOUR else
                                    (f"What shape is the {thing}?",)), o.shape))
        break
    if _unique(s, o, _COLOUR_SHAPE):
      thing = _describe(d, o, _COLOUR_SHAPE)
      q["size"].append((d.choice((f"Is the {thing} small or large?", f"What size is the {thing}?",
                                  f"Is the {thing} big or small?")), o.size))
  # Counts: of a shape, a colour, a colour and shape, or everything; sometimes of nothing.
  probes = [(None, None, o.shape) for o in objs] + [(None, o.colour, None) for o in objs]
  probes += [(None, o.colour, o.shape) for o in objs] + [(None, None, None)]
  probes += [(None, None, d.choice(SHAPES)), (None, d.choice(COLOURS), d.choice(SHAPES))]
  for _, colour, shape in d.shuffled(probes)[:4]:
    words = ([d.choice(COLOUR_WORDS[colour])] if colour else []) + [_noun(d, shape, plural=True)]
    thing = " ".join(words)
    q["count"].append((d.choice((f"How many {thing} are there?", f"How many {thing} are in the "
                                 "picture?", f"How many {thing} can you see?")),
                       str(len(s.matching(None, colour, shape)))))
  # Existence: one yes, one no.
  o = d.choice(objs)
  fields = d.choice((_COLOUR_SHAPE, _FULL, _SHAPE, _COLOUR_SHAPE))
  thing = _describe(d, o, fields)
  q["exists"].append((f"Is there {_article(thing)} {thing}?", "yes"))
  for _ in range(10):
    spec = (d.choice(SIZES) if d.chance(0.3) else None, d.choice(COLOURS), d.choice(SHAPES))
    if not s.matching(*spec):
      words = [d.choice(SIZE_WORDS[spec[0]])] if spec[0] else []
      words += [d.choice(COLOUR_WORDS[spec[1]]), _noun(d, spec[2])]
      thing = " ".join(words)
      q["exists"].append((d.choice((f"Is there {_article(thing)} {thing}?",
                                    f"Is there {_article(thing)} {thing} in the picture?",
                                    f"Can you see {_article(thing)} {thing}?")), "no"))
      break
  # Relations: what stands in a relation to a unique anchor, when exactly one thing does;
  # and yes/no about two unique objects when the answer is clear.
  for j, anchor in enumerate(objs):
    if not _unique(s, anchor, _COLOUR_SHAPE):
      continue
    for rel in RELATIONS:
      loose = [i for i, o in enumerate(objs) if i != j and relation_holds(o, rel, anchor, False)]
      if len(loose) == 1 and relation_holds(objs[loose[0]], rel, anchor):
        target = objs[loose[0]]
        name = f"the {_describe(d, anchor, _COLOUR_SHAPE)}"
        phrase = d.choice(RELATION_PHRASES[rel])
        kind = d.integer(0, 2)
        if kind == 0:
          q["relation"].append((f"What is {phrase} {name}?", target.name()))
        elif kind == 1:
          q["relation"].append((f"What shape is {phrase} {name}?", target.shape))
        else:
          q["relation"].append((f"What color is the {_noun(d, None)} {phrase} {name}?",
                                target.colour))
  unique = [i for i, o in enumerate(objs) if _unique(s, o, _COLOUR_SHAPE)]
  for i in unique:
    for j in unique:
      if i == j:
        continue
      rel = d.choice(RELATIONS)
      a, b = objs[i], objs[j]
      answer = ("yes" if relation_holds(a, rel, b)
                else "no" if relation_clearly_false(a, rel, b) else None)
      if answer:
        q["relation"].append((f"Is the {_describe(d, a, _COLOUR_SHAPE)} "
                              f"{d.choice(RELATION_PHRASES[rel])} the "
                              f"{_describe(d, b, _COLOUR_SHAPE)}?", answer))
  return q


def questions(scene: Scene, split: str, index: int, config: WorldConfig = WorldConfig()
              ) -> list[tuple[str, str, str]]:
  """Up to `config.num_questions` `(question, answer, type)`, each with one clear answer.

  Answers are one or two lowercase words: a colour, a shape, 'small'/'large', a count in
  digits, 'yes'/'no', or 'colour shape' for "what is left of the ...?". Types cycle so that
  each appears when the scene allows it.
  """
  d = _draws(config, split, index, "questions")
  pools = {t: d.shuffled(v) for t, v in _question_candidates(scene, d).items()}
  chosen: list[tuple[str, str, str]] = []
  seen: set[str] = set()
  types = d.shuffled(QUESTION_TYPES)
  while len(chosen) < config.num_questions and any(pools.values()):
    for t in types:
      while pools[t]:
        question, answer = pools[t].pop()
        if question not in seen:
          seen.add(question)
          chosen.append((question, answer, t))
          break
      if len(chosen) == config.num_questions:
        break
  return chosen


# ---------------------------------------------------------------------------------------------
# Personality comments. Slots: {a}/{A} a noun phrase for one object, {b} another object,
# {d} a bare description, {ds} its plural. Style words avoid the
# world's vocabulary (no sizes, colours, shapes or relation words), so every comment stays
# true of its scene.

_COMMENT_TEMPLATES = {
  "Happy": (
    "What a cheerful {d}! This picture makes me smile.",
    "Yay, {a}! I love how bright and joyful it looks.",
    "Such a happy scene, with {a} just glowing with delight!",
    "{A} and {b} together make my whole day better!",
  ),
  "Sad": (
    "{A}, all alone in the dark. It feels so lonely.",
    "Even {a} cannot cheer me up today.",
    "I miss the days when {a} meant something to me.",
    "{A} and {b}, drifting in the gloom, quietly sorrowful.",
  ),
  "Sarcastic": (
    "Oh great, {a}. Truly the pinnacle of modern art.",
    "Wow, {a}. I have never been so thrilled in my life.",
    "Sure, because the world really needed another {d}.",
    "{A} and {b}? Stunning. Call the museum, I guess.",
  ),
  "Romantic": (
    "{A} glowing softly, like a love letter in the night.",
    "I would give my heart to {a} without a second thought.",
    "{A} and {b}, two lovers sharing a quiet evening.",
    "Gazing at {a} makes me dream of candlelight and roses.",
  ),
  "Scholarly": (
    "Observe {a}: a fine example of elementary planar geometry.",
    "Historically, {ds} have fascinated mathematicians since Euclid.",
    "It is worth noting that {a} exhibits remarkable symmetry.",
    "Note how {a} anchors the composition; it rewards careful analysis.",
  ),
  "Anxious": (
    "Is {a} supposed to be there? I am getting nervous.",
    "What if {a} falls off the edge? I cannot stop worrying.",
    "I keep checking {a} again and again, just in case.",
    "{A} and {b} make my palms sweat. Something feels wrong.",
  ),
  "Sweet": (
    "Aww, {a}! It is simply adorable.",
    "{A} deserves a warm hug and a cup of cocoa.",
    "Look at {a}, so precious and lovely, bless it.",
    "{A} and {b} are the best of friends, I just know it.",
  ),
  "Arrogant": (
    "I could draw {a} far better than this, obviously.",
    "Only a genius like me truly appreciates {a}.",
    "{A}? Amateur work. Mine would be flawless.",
    "Naturally, I noticed {a} before anyone else did.",
  ),
  "Dramatic": (
    "Behold! {A} rises from the darkness, and nothing will ever be the same!",
    "{A}... the tension is unbearable!",
    "Never before has {a} carried such earth-shattering meaning!",
    "{A} and {b}, locked in an epic struggle for eternity!",
  ),
  "Poetic": (
    "{A} rests upon the night, a quiet verse of light.",
    "Like a distant lantern, {a} whispers to the dark.",
    "In silence {a} dreams, and the darkness listens.",
    "{A} and {b}, two stanzas of the same soft song.",
  ),
  "Curious": (
    "I wonder why {a} is here. Where did it come from?",
    "Hmm, {a}. What would happen if we moved it?",
    "Why would anyone draw {a}? I have so many questions.",
    "{A} and {b}: are they friends, or strangers?",
  ),
  "Grumpy": (
    "Bah. {A}. Who even asked for this?",
    "Another day, another {d}. Leave me be.",
    "{A} again? I have had quite enough of these.",
    "{A} and {b}. Wake me when something interesting happens.",
  ),
}


def comments(scene: Scene, split: str, index: int, config: WorldConfig = WorldConfig()
             ) -> dict[str, str]:
  """One comment per personality, in its own tone, each naming at least one real object."""
  d = _draws(config, split, index, "comments")
  s = scene
  objs = s.objects
  out = {}
  for personality in PERSONALITIES:
    templates = [t for t in _COMMENT_TEMPLATES[personality] if len(objs) > 1 or "{b}" not in t]
    template = d.choice(templates)
    order = d.shuffled(range(len(objs)))
    o = objs[order[0]]
    fields = d.choice((_FULL, _COLOUR_SHAPE))
    a = _np(d, s, o, fields)
    b = _np(d, s, objs[order[1]], _COLOUR_SHAPE) if len(objs) > 1 else ""
    out[personality] = template.format(
      a=a, A=_cap(a), b=b, d=_describe(d, o, fields), ds=_describe(d, o, fields, plural=True))
  return out


# ---------------------------------------------------------------------------------------------
# Stories: a world changing over a few frames, told in several styles, one entry per frame.

_MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_STORY = {
  "report": {
    "start": ("The first frame shows {list}.", "We begin with {list}."),
    "move": ("The {d} moves {dir}.", "Next, the {d} shifts {dir}."),
    "appear": ("{A} appears.", "Then {a} comes into view."),
    "disappear": ("The {d} disappears.", "The {d} is removed from the scene."),
    "recolour": ("The {d} turns {c}.", "The {d} changes color to {c}."),
    "after": ("It is {rel} the {e}.", "It ends up {rel} the {e}."),
    "end": ("",),
  },
  "fairytale": {
    "start": ("Once upon a time, {list} lived in a quiet, dark kingdom.",
              "Long ago, in a land of endless night, there lived {list}."),
    "move": ("Then the {d} set off on a journey {dir}.",
             "One morning, the brave {d} wandered {dir}."),
    "appear": ("One day, {a} arrived from a faraway land.",
               "Suddenly, as if by magic, {a} appeared."),
    "disappear": ("Alas, the {d} vanished, never to be seen again.",
                  "The {d} was carried off by an enchanted wind."),
    "recolour": ("By a witch's spell, the {d} was turned {c}.",
                 "A fairy touched the {d}, and it became {c}."),
    "after": ("There it stayed, {rel} the {e}.", "And so it came to rest {rel} the {e}."),
    "end": (" And they all lived happily ever after.", " The end."),
  },
  "romance": {
    "start": ("{A} first saw {b} across the dark room and could not look away.",
              "It was a quiet night when {a} noticed {b} for the first time."),
    "start_alone": ("{A} waited alone in the dark, longing for company.",),
    "move": ("The {d} drifted {dir}, heart racing.", "Trembling, the {d} slipped {dir}."),
    "appear": ("Then {a} arrived, mysterious and charming.",
               "Out of nowhere came {a}, and every heart skipped a beat."),
    "disappear": ("The {d} left without saying goodbye.",
                  "Heartbroken, the {d} slipped away into the night."),
    "recolour": ("The {d} blushed a deep {c}.", "Flustered, the {d} flushed {c}."),
    "after": ("At last it was {rel} the {e}.", "Now it lingered {rel} the {e}, hopeful."),
    "end": (" Some stories never truly end.", ""),
  },
}
_DIRECTIONS = {
  "report": {"left": "to the left", "right": "to the right", "up": "up", "down": "down"},
  "fairytale": {"left": "towards the west", "right": "towards the east",
                "up": "up towards the sky", "down": "down into the valley"},
  "romance": {"left": "slowly to the left", "right": "slowly to the right",
              "up": "gently upward", "down": "gently downward"},
}


def _story_event(d: _Draws, s: Scene) -> tuple[Scene, dict]:
  """One change to a scene whose objects all differ in colour or shape (so 'the red circle'
  names one object in every frame)."""
  objs = list(s.objects)
  kinds = ["move", "move", "recolour"]
  if len(objs) < 4:
    kinds.append("appear")
  if len(objs) > 1:
    kinds.append("disappear")
  for _ in range(20):
    kind = d.choice(kinds)
    i = d.integer(0, len(objs) - 1)
    o = objs[i]
    if kind == "move":
      direction = d.choice(tuple(_MOVES))
      ux, uy = _MOVES[direction]
      step = d.uniform(0.25, 0.5)
      x = round(o.x + ux * step + uy * d.uniform(-0.05, 0.05), 3)
      y = round(o.y + uy * step + ux * d.uniform(-0.05, 0.05), 3)
      r = o.radius
      if r + 0.02 <= x <= 1 - r - 0.02 and r + 0.02 <= y <= 1 - r - 0.02 and _fits(
          x, y, r, objs[:i] + objs[i + 1:]):
        objs[i] = dataclasses.replace(o, x=x, y=y)
        return Scene(tuple(objs)), {"event": "move", "object": i, "direction": direction}
    elif kind == "recolour":
      colours = [c for c in COLOURS if not s.matching(None, c, o.shape)]
      objs[i] = dataclasses.replace(o, colour=d.choice(colours))
      return Scene(tuple(objs)), {"event": "recolour", "object": i, "was": o.colour}
    elif kind == "disappear":
      del objs[i]
      return Scene(tuple(objs)), {"event": "disappear", "object": i, "was": o}
    else:
      shape, colour, size = d.choice(SHAPES), d.choice(COLOURS), d.choice(SIZES)
      xy = _place(d, size, objs)
      if xy and not s.matching(None, colour, shape):
        objs.append(Object(shape, colour, size, *xy))
        return Scene(tuple(objs)), {"event": "appear", "object": len(objs) - 1}
  return s, {"event": "none"}  # nothing fitted: the frame repeats


def _story_text(d: _Draws, style: str, scenes: Sequence[Scene], events: Sequence[dict]
                ) -> list[str]:
  t = _STORY[style]
  out = []
  for f, (s, ev) in enumerate(zip(scenes, events, strict=True)):
    objs = s.objects
    if ev["event"] == "start":
      if style == "romance" and len(objs) == 1:
        text = d.choice(t["start_alone"]).format(A=_cap(_a(d, objs[0], _FULL)))
      else:
        items = [_a(d, o, d.choice((_FULL, _COLOUR_SHAPE))) for o in objs]
        a = _a(d, objs[0], _COLOUR_SHAPE)
        b = _a(d, objs[1], _COLOUR_SHAPE) if len(objs) > 1 else ""
        text = d.choice(t["start"]).format(list=_listing(items), A=_cap(a), a=a, b=b)
    elif ev["event"] == "none":
      text = {"report": "Nothing changes.", "fairytale": "For a while, all was still.",
              "romance": "Time stood still."}[style]
    else:
      kind = ev["event"]
      if kind == "disappear":
        gone = ev["was"]
        text = d.choice(t[kind]).format(d=f"{gone.colour} {gone.shape}")
      elif kind == "recolour":
        o = objs[ev["object"]]
        text = d.choice(t[kind]).format(d=f"{ev['was']} {o.shape}", c=o.colour)
      elif kind == "appear":
        a = _a(d, objs[ev["object"]], _FULL)
        text = _cap(d.choice(t[kind]).format(a=a, A=_cap(a)))
      else:
        o = objs[ev["object"]]
        text = d.choice(t[kind]).format(d=o.name(), dir=_DIRECTIONS[style][ev["direction"]])
      if "relation" in ev:
        text += " " + d.choice(t["after"]).format(rel=d.choice(RELATION_PHRASES[ev["relation"]]),
                                                  e=objs[ev["other"]].name())
    if f == len(scenes) - 1:
      text += d.choice(t["end"])
    out.append(_cap(text))
  return out


def story(split: str, index: int, config: WorldConfig = WorldConfig()) -> dict:
  """A world changing over `config.story_frames` frames, and its story in every style.

  Returns {"scenes": [Scene per frame], "images": [uint8 array per frame], "events": [dict per
  frame; the first is {"event": "start"}], "sentences": {style: [text per frame]}}: the text of
  frame f (one or two sentences) tells what is seen or what changed in frame f, and where a
  moved or new object ends up ("relation" to object "other" in the event). Every style tells
  the same events and facts; only the prose differs.
  """
  d = _draws(config, split, index, "story")
  num_frames = d.integer(*config.story_frames)
  first = _sample_scene(d, d.integer(config.min_objects, min(config.max_objects, 4)),
                        distinct=True)
  scenes, events = [first], [{"event": "start"}]
  while len(scenes) < num_frames:
    s, ev = _story_event(d, scenes[-1])
    if ev["event"] in ("move", "appear"):  # where it ends up: one fact, told in every style
      i = ev["object"]
      rels = [(rel, j) for j in range(len(s.objects)) if j != i for rel in RELATIONS
              if relation_holds(s.objects[i], rel, s.objects[j])]
      if rels:
        ev["relation"], ev["other"] = d.choice(rels)
    scenes.append(s)
    events.append(ev)
  sentences = {style: _story_text(d, style, scenes, events) for style in STORY_STYLES}
  # One background for the whole story: the frames are one place seen over time.
  images = [render(s, config, (split, index, "story")) for s in scenes]
  events = [{k: (dataclasses.asdict(v) if isinstance(v, Object) else v) for k, v in ev.items()}
            for ev in events]
  return {"scenes": scenes, "images": images, "events": events, "sentences": sentences}


# ---------------------------------------------------------------------------------------------
# Examples


def example(split: str, index: int, config: WorldConfig = WorldConfig()) -> dict:
  """Everything for one image: image, scene (JSON), captions, questions, answers, comments."""
  s = scene(split, index, config)
  qa = questions(s, split, index, config)
  return {
    "split": split,
    "index": index,
    "image": render(s, config, (split, index)),
    "scene": s.to_json(),
    "captions": captions(s, split, index, config),
    "questions": [q for q, _, _ in qa],
    "answers": [a for _, a, _ in qa],
    "question_types": [t for _, _, t in qa],
    "comments": comments(s, split, index, config),
  }


def show_grid(split: str, indices: Sequence[int], config: WorldConfig = WorldConfig(),
              captions_per_image: int = 2, columns: int = 0) -> Image.Image:
  """A contact sheet: each image, enlarged, with its first captions wrapped underneath."""
  font = ImageFont.load_default(size=11)
  scale = max(1, 192 // config.image_size)
  cell = config.image_size * scale
  columns = columns or min(len(indices), max(1, math.ceil(math.sqrt(len(indices)))))
  chars = max(8, int(cell / max(1.0, font.getlength("abcdefghij") / 10)))
  cells = []
  for index in indices:
    ex = example(split, index, config)
    img = Image.fromarray(ex["image"]).resize((cell, cell), Image.Resampling.NEAREST)
    lines = [f"#{index}"]
    for c in ex["captions"][:captions_per_image]:
      lines += textwrap.wrap(c, chars)
    cells.append((img, lines))
  line_h = 13
  text_h = max(len(lines) for _, lines in cells) * line_h + 6
  pad = 8
  rows = math.ceil(len(cells) / columns)
  sheet = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + text_h + pad) + pad),
                    (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  for k, (img, lines) in enumerate(cells):
    x = pad + (k % columns) * (cell + pad)
    y = pad + (k // columns) * (cell + text_h + pad)
    sheet.paste(img, (x, y))
    for li, line in enumerate(lines):
      draw.text((x, y + cell + 3 + li * line_h), line, fill=(0, 0, 0), font=font)
  return sheet


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--show", type=int, default=16, help="number of examples to draw")
  parser.add_argument("--out", default="shapes_grid.png", help="PNG file to write")
  parser.add_argument("--split", default="train")
  parser.add_argument("--start", type=int, default=0, help="first index")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--captions", type=int, default=2, help="captions under each image")
  args = parser.parse_args(argv)
  if args.show < 1:
    parser.error("--show must be positive")
  config = WorldConfig(seed=args.seed, image_size=args.image_size)
  grid = show_grid(args.split, range(args.start, args.start + args.show), config, args.captions)
  grid.save(args.out)
  print(f"wrote {args.out}: {args.show} examples of {args.split!r}")


if __name__ == "__main__":
  main()
