"""Grounding of generated text in the shapes world: is what a caption says there?

Captions are parsed with the vocabulary the world's generator uses (`mmzoo.data.shapes`:
synonyms included), and checked against the caption's scene.

Parsing. A caption is lower-cased and split into words and punctuation.
- A *mention* is an optional determiner ("a", "the", "another", ...) or number ("two", "3"),
  then size and colour words in any order, then a noun: a shape word ("circle", "disc", ...,
  singular or plural) or a generic noun ("shape", "object", "thing", "one", ...). "a circle"
  names a shape only, "a red one" a colour only, "two big red squares" all three and a count.
  A mention with no attribute ("an object") names nothing and is not scored. Adjectives after
  "is"/"are" join the mention before them: "the circle is red" is a red circle. A mention
  after "no", "not", "nor" or "without" is negated and not scored. Adjectives with no noun
  ("a red and a blue circle": the "red") are not mentions.
- A *relation* is a phrase from `RELATION_PHRASES` (and a few more spellings: "left side
  of", "underneath", "alongside", ...). Within one clause (clauses end at punctuation and at
  "while", "but", "whereas", "where"), "X <rel> Y" relates the nearest mention before the
  phrase to the nearest after it; a clause that opens with the phrase ("Left of the square is
  a circle") relates the second mention after it to the first; "X and Y are next to each
  other" relates the two mentions before it.

Scoring, per caption against its scene (an object *matches* a mention when it has every
attribute the mention names):
- precision: a mention stands for `count` objects (1 without a number); it is correct for
  as many as there are matching objects in the scene, up to `count`. Mentions need not be
  distinct: "the circle ... the circle" is two correct mentions.
- recall: the size of a largest one-to-one matching between mentioned objects and scene
  objects, over the number of scene objects.
- relations: a stated relation is *resolved* when both mentions match some object; it holds
  when some pair of distinct matching objects makes it not false
  (`shapes.relation_holds(..., strict=False)`). Unresolved relations are counted, not scored.
- counts: a mention with an explicit number ("two red squares", "three shapes") is correct
  when exactly that many objects match.

`grounding_metrics` pools these over all captions (sums, then one division); a rate with
nothing to count is 0.0, and the counts returned beside it tell so.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from mmzoo.data import shapes
from mmzoo.eval import registry

_TOKEN = re.compile(r"[a-z0-9]+|[.,;:!?]")
_BREAKS = frozenset(".,;:!?") | {"while", "but", "whereas", "where"}
_NEGATIONS = frozenset({"no", "not", "nor", "without"})
_DETERMINERS = frozenset({"a", "an", "the", "another", "this", "that", "these", "those",
                          "some", "each", "every", "any"})
_COPULAS = frozenset({"is", "are"})
_MAX_COUNT = 20


def _table(entries: dict) -> dict[str, str]:
  return {word: name for name, words in entries.items() for word in words}


_SIZE = _table({k: v + shapes.PARSER_ONLY_SIZE_WORDS.get(k, ())
                for k, v in shapes.SIZE_WORDS.items()})
_COLOUR = _table(shapes.COLOUR_WORDS)
_SHAPE_PAIRS = [(name, pair) for name, pairs in shapes.SHAPE_WORDS.items()
                for pair in pairs + shapes.PARSER_ONLY_SHAPE_WORDS.get(name, ())]
_SHAPE_SINGULAR = {singular: name for name, (singular, _) in _SHAPE_PAIRS}
_SHAPE_PLURAL = {plural: name for name, (_, plural) in _SHAPE_PAIRS}
_GENERIC_SINGULAR = frozenset(s for s, _ in shapes.GENERIC_NOUNS + shapes.PARSER_ONLY_GENERIC_NOUNS)
_GENERIC_PLURAL = frozenset(p for _, p in shapes.GENERIC_NOUNS + shapes.PARSER_ONLY_GENERIC_NOUNS)
_NUMBERS = {w: i for i, w in enumerate(shapes.NUMBER_WORDS)}
_RELATION_PHRASES = sorted(
  ((tuple(p.split()), rel) for rel, phrases in shapes.RELATION_PHRASES.items()
   for p in phrases + shapes.PARSER_ONLY_RELATION_PHRASES.get(rel, ())),
  key=lambda pr: -len(pr[0]))
_EACH_OTHER = (("each", "other"), ("one", "another"))
_CONFLICT = "?"  # an attribute stated twice, differently: matches no object


@dataclasses.dataclass(frozen=True)
class Mention:
  """A noun phrase naming objects; None: attribute not stated."""

  text: str
  size: str | None = None
  colour: str | None = None
  shape: str | None = None
  count: int | None = None  # an explicit number, "two red squares"
  plural: bool = False
  negated: bool = False

  @property
  def named(self) -> bool:
    """Whether it states any attribute (and so is scored)."""
    return any(a is not None for a in (self.size, self.colour, self.shape))

  def matches(self, o: shapes.Object) -> bool:
    return ((self.size is None or self.size == o.size)
            and (self.colour is None or self.colour == o.colour)
            and (self.shape is None or self.shape == o.shape))


@dataclasses.dataclass(frozen=True)
class ParsedCaption:
  mentions: tuple[Mention, ...]
  relations: tuple[tuple[int, str, int], ...]  # (mention index, relation, mention index)


def _merge(old: str | None, new: str) -> str:
  return new if old in (None, new) else _CONFLICT


def _mention_at(tokens: Sequence[str], p: int) -> tuple[Mention, int] | None:
  """The mention starting at tokens[p] and the index after it, or None."""
  q = p
  count = None
  negated = p > 0 and tokens[p - 1] in _NEGATIONS
  if tokens[q] in _NEGATIONS:
    negated = True
    q += 1
  elif tokens[q] in _DETERMINERS:
    q += 1
  elif tokens[q] in _NUMBERS:
    count = _NUMBERS[tokens[q]]
    q += 1
  elif tokens[q].isdigit():
    count = min(int(tokens[q]), _MAX_COUNT)
    q += 1
  size = colour = None
  while q < len(tokens) and (tokens[q] in _SIZE or tokens[q] in _COLOUR):
    if tokens[q] in _SIZE:
      size = _merge(size, _SIZE[tokens[q]])
    else:
      colour = _merge(colour, _COLOUR[tokens[q]])
    q += 1
  if q >= len(tokens):
    return None
  word = tokens[q]
  if word in _SHAPE_SINGULAR or word in _SHAPE_PLURAL:
    shape, plural = _SHAPE_SINGULAR.get(word) or _SHAPE_PLURAL[word], word in _SHAPE_PLURAL
  elif word in _GENERIC_SINGULAR or word in _GENERIC_PLURAL:
    shape, plural = None, word in _GENERIC_PLURAL
  else:
    return None
  q += 1
  # "the circle is red", "the squares are big and blue"
  if q + 1 < len(tokens) and tokens[q] in _COPULAS:
    r, extra = q + 1, []
    while r < len(tokens):
      if tokens[r] in _SIZE or tokens[r] in _COLOUR:
        extra.append(tokens[r])
        r += 1
      elif tokens[r] == "and" and r + 1 < len(tokens) and (
          tokens[r + 1] in _SIZE or tokens[r + 1] in _COLOUR):
        r += 1
      else:
        break
    noun_follows = r < len(tokens) and (tokens[r] in _SHAPE_SINGULAR or tokens[r] in _SHAPE_PLURAL
                                        or tokens[r] in _GENERIC_SINGULAR
                                        or tokens[r] in _GENERIC_PLURAL)
    if extra and not noun_follows:
      for w in extra:
        if w in _SIZE:
          size = _merge(size, _SIZE[w])
        else:
          colour = _merge(colour, _COLOUR[w])
      q = r
  mention = Mention(text=" ".join(tokens[p:q]), size=size, colour=colour, shape=shape,
                    count=count, plural=plural, negated=negated)
  return mention, q


def _relation_at(tokens: Sequence[str], p: int) -> tuple[str, bool, int] | None:
  """(relation, 'each other' follows, index after) for a relation phrase at tokens[p]."""
  for phrase, rel in _RELATION_PHRASES:
    if tuple(tokens[p:p + len(phrase)]) == phrase:
      q = p + len(phrase)
      for pair in _EACH_OTHER:
        if tuple(tokens[q:q + 2]) == pair:
          return rel, True, q + 2
      return rel, False, q
  return None


def parse_caption(text: str) -> ParsedCaption:
  """Mentions and relations stated in one caption (see the module docstring)."""
  tokens = _TOKEN.findall(text.lower())
  mentions: list[Mention] = []
  relations: list[tuple[int, str, int]] = []
  clause: list[tuple] = []  # ("m", mention index) | ("r", relation, each_other)

  def close_clause():
    for k, item in enumerate(clause):
      if item[0] != "r":
        continue
      before = [x[1] for x in clause[:k] if x[0] == "m"]
      after = [x[1] for x in clause[k + 1:] if x[0] == "m"]
      if item[2]:
        if len(before) >= 2:
          relations.append((before[-2], item[1], before[-1]))
      elif before and after:
        relations.append((before[-1], item[1], after[0]))
      elif not before and len(after) >= 2:
        relations.append((after[1], item[1], after[0]))
    clause.clear()

  p = 0
  while p < len(tokens):
    if tokens[p] in _BREAKS:
      close_clause()
      p += 1
      continue
    found_relation = _relation_at(tokens, p)
    if found_relation:
      rel, each_other, p = found_relation
      clause.append(("r", rel, each_other))
      continue
    found_mention = _mention_at(tokens, p)
    if found_mention:
      mention, p = found_mention
      mentions.append(mention)
      clause.append(("m", len(mentions) - 1))
      continue
    p += 1
  close_clause()
  # A relation with a negated side is not a claim that something holds.
  relations = [(a, r, b) for a, r, b in relations
               if not (mentions[a].negated or mentions[b].negated)]
  return ParsedCaption(tuple(mentions), tuple(relations))


def _max_matching(slots: Sequence[Mention], objects: Sequence[shapes.Object]) -> int:
  """Size of a largest one-to-one matching of mention slots to objects they match."""
  owner: list[int | None] = [None] * len(objects)

  def augment(i: int, seen: list[bool]) -> bool:
    for j, o in enumerate(objects):
      if not seen[j] and slots[i].matches(o):
        seen[j] = True
        if owner[j] is None or augment(owner[j], seen):
          owner[j] = i
          return True
    return False

  return sum(augment(i, [False] * len(objects)) for i in range(len(slots)))


def ground_caption(caption: str, scene: shapes.Scene | str) -> dict:
  """Scores one caption against its scene (a Scene or its JSON); see the module docstring."""
  if isinstance(scene, str):
    scene = shapes.Scene.from_json(scene)
  parsed = parse_caption(caption)
  objects = scene.objects
  mentions_out, slots = [], []
  num_mentioned = num_correct = num_counts = num_counts_correct = 0
  for m in parsed.mentions:
    if m.negated:
      continue
    matching = sum(m.matches(o) for o in objects)
    if m.count is not None:
      num_counts += 1
      num_counts_correct += matching == m.count
    if m.named:
      stands_for = m.count if m.count is not None else 1
      num_mentioned += stands_for
      num_correct += min(stands_for, matching)
      slots += [m] * stands_for
    mentions_out.append({"text": m.text, "size": m.size, "colour": m.colour, "shape": m.shape,
                         "count": m.count, "matching_objects": matching, "scored": m.named})
  relations_out = []
  num_resolved = num_held = 0
  for a, rel, b in parsed.relations:
    ma, mb = parsed.mentions[a], parsed.mentions[b]
    subjects = [o for o in objects if ma.matches(o)]
    others = [o for o in objects if mb.matches(o)]
    holds = None
    if subjects and others:
      holds = any(x is not y and shapes.relation_holds(x, rel, y, strict=False)
                  for x in subjects for y in others)
      num_resolved += 1
      num_held += holds
    relations_out.append({"subject": ma.text, "relation": rel, "object": mb.text,
                          "holds": holds})
  return {
    "caption": caption,
    "mentions": mentions_out,
    "relations": relations_out,
    "num_mentioned": num_mentioned,
    "num_correct": num_correct,
    "num_objects": len(objects),
    "num_recalled": _max_matching(slots, objects),
    "num_relations": num_resolved,
    "num_relations_held": num_held,
    "num_relations_unresolved": len(parsed.relations) - num_resolved,
    "num_counts": num_counts,
    "num_counts_correct": num_counts_correct,
  }


def _rate(num: float, den: float) -> float:
  return num / den if den else 0.0


def grounding_metrics(captions: Sequence[str], scenes: Sequence[shapes.Scene | str]
                      ) -> tuple[dict[str, float], list[dict]]:
  """Pooled grounding metrics over captions and their scenes, and per-caption results.

  Returns ({"mention_precision", "mention_recall", "relation_accuracy", "count_accuracy",
  "num_captions", "num_mentioned", "num_correct", "num_objects", "num_recalled",
  "num_relations", "num_relations_held", "num_relations_unresolved", "num_counts",
  "num_counts_correct"}: floats, [ground_caption(...) per caption]).
  """
  if len(captions) != len(scenes):
    raise ValueError(f"{len(captions)} captions but {len(scenes)} scenes")
  per_caption = [ground_caption(c, s) for c, s in zip(captions, scenes, strict=True)]
  keys = ("num_mentioned", "num_correct", "num_objects", "num_recalled", "num_relations",
          "num_relations_held", "num_relations_unresolved", "num_counts", "num_counts_correct")
  totals = {k: float(sum(r[k] for r in per_caption)) for k in keys}
  metrics = {
    "mention_precision": _rate(totals["num_correct"], totals["num_mentioned"]),
    "mention_recall": _rate(totals["num_recalled"], totals["num_objects"]),
    "relation_accuracy": _rate(totals["num_relations_held"], totals["num_relations"]),
    "count_accuracy": _rate(totals["num_counts_correct"], totals["num_counts"]),
    "num_captions": float(len(per_caption)),
    **totals,
  }
  return metrics, per_caption


@registry.register("grounding")
def evaluate_grounding(task, params, mesh, split: str) -> dict[str, float]:
  """The "grounding" evaluator: the task's predicted captions against their shapes scenes.

  Asks `task.caption_predictions(params, mesh, split)` for `(references, predictions)`
  and `task.scenes(split)` for `{image_id: scene JSON}`.
  """
  _, predictions = task.caption_predictions(params, mesh, split)
  scenes = task.scenes(split)
  keys = sorted(predictions)
  metrics, _ = grounding_metrics([predictions[k] for k in keys], [scenes[k] for k in keys])
  return {f"grounding_{k}" if not k.startswith("num_") else k: v for k, v in metrics.items()
          if k in ("mention_precision", "mention_recall", "relation_accuracy", "count_accuracy",
                   "num_relations")}
