"""Tests for the built-in shapes world and the grounding metric.

Answers are checked against scenes with logic written here, not the generator's own.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from mmzoo.data import shapes
from mmzoo.data.shapes import Object, Scene, WorldConfig
from mmzoo.errors import InputError
from mmzoo.eval import grounding

CONFIG = WorldConfig()


@pytest.fixture(scope="module")
def examples():
  return [shapes.example("validation", i, CONFIG) for i in range(300)]


def test_same_key_same_example_and_different_keys_differ():
  a, b = shapes.example("train", 7, CONFIG), shapes.example("train", 7, CONFIG)
  assert a["image"].tobytes() == b["image"].tobytes()
  for key in ("scene", "captions", "questions", "answers", "question_types", "comments"):
    assert a[key] == b[key]
  for other in (shapes.example("train", 8, CONFIG), shapes.example("test", 7, CONFIG),
                shapes.example("train", 7, WorldConfig(seed=1))):
    assert other["scene"] != a["scene"]
    assert other["image"].tobytes() != a["image"].tobytes()
  s1, s2 = shapes.story("train", 3, CONFIG), shapes.story("train", 3, CONFIG)
  assert s1["sentences"] == s2["sentences"] and s1["scenes"] == s2["scenes"]
  assert all(x.tobytes() == y.tobytes() for x, y in zip(s1["images"], s2["images"], strict=True))
  assert shapes.story("validation", 3, CONFIG)["scenes"] != s1["scenes"]


def test_scene_json_round_trip_and_invalid_input():
  s = shapes.scene("train", 11, CONFIG)
  assert Scene.from_json(s.to_json()) == s
  with pytest.raises(InputError):
    Scene.from_json('{"objects": [{"shape": "blob"}]}')
  with pytest.raises(InputError):
    WorldConfig(max_objects=9)


def test_scenes_have_one_to_four_separate_objects(examples):
  counts = set()
  for ex in examples:
    objs = Scene.from_json(ex["scene"]).objects
    counts.add(len(objs))
    for i, a in enumerate(objs):
      assert a.shape in shapes.SHAPES and a.colour in shapes.COLOURS and a.size in shapes.SIZES
      for b in objs[i + 1:]:
        assert math.hypot(a.x - b.x, a.y - b.y) > shapes.RADIUS[a.size] + shapes.RADIUS[b.size]
  assert counts == {1, 2, 3, 4}
  assert len(shapes.SHAPES) >= 5 and len(shapes.COLOURS) >= 7


@pytest.mark.parametrize("size", [64, 128, 224])
def test_images_are_rgb_uint8_and_objects_visible(size):
  config = WorldConfig(image_size=size)
  for index in range(4):
    s = shapes.scene("train", index, config)
    image = shapes.render(s, config, ("train", index))
    assert image.dtype == np.uint8 and image.shape == (size, size, 3)
    for o in s.objects:
      y, x = int(o.y * size), int(o.x * size)
      r = max(1, size // 64)
      patch = image[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3).astype(float)
      distance = np.linalg.norm(patch - np.array(shapes.RGB[o.colour]), axis=1)
      assert distance.min() < 60, (o, patch)


def test_ground_truth_captions_are_fully_grounded(examples):
  caps = [c for ex in examples for c in ex["captions"]]
  scenes = [ex["scene"] for ex in examples for _ in ex["captions"]]
  metrics, per_caption = grounding.grounding_metrics(caps, scenes)
  assert metrics["mention_precision"] == 1.0
  assert metrics["relation_accuracy"] == 1.0
  assert metrics["count_accuracy"] == 1.0
  assert metrics["num_relations"] > 50 and metrics["num_relations_unresolved"] == 0
  assert 0.3 < metrics["mention_recall"] < 1.0
  assert len(per_caption) == len(caps)
  # Comments are true of their scenes too.
  comments = [c for ex in examples[:100] for c in ex["comments"].values()]
  scenes = [ex["scene"] for ex in examples[:100] for _ in ex["comments"]]
  metrics, per_caption = grounding.grounding_metrics(comments, scenes)
  assert metrics["mention_precision"] == 1.0
  assert all(r["num_correct"] >= 1 for r in per_caption)  # each names a real object


def test_captions_are_varied_and_of_coco_length(examples):
  relation_words = re.compile(r"\b(left|right|above|over|below|under|beneath|next|beside|near)\b")
  with_relations = 0
  for ex in examples:
    caps = ex["captions"]
    assert len(caps) >= 5 and len(set(caps)) == len(caps)
    assert all(4 <= len(c.split()) <= 20 for c in caps), caps
    with_relations += any(relation_words.search(c) for c in caps)
  assert with_relations > len(examples) // 3
  first_words = {c.split()[0] for ex in examples for c in ex["captions"]}
  assert len(first_words) >= 10
  words = {w for ex in examples for c in ex["captions"] for w in re.findall(r"[a-z]+", c.lower())}
  assert {"disc", "circle", "big", "large", "little", "small"} <= words  # synonyms in use


# A scene for hand-checked grounding: a large red circle left of a small blue square, far apart,
# and a small blue star just above the square.
HAND = Scene((Object("circle", "red", "large", 0.2, 0.6),
              Object("square", "blue", "small", 0.8, 0.6),
              Object("star", "blue", "small", 0.8, 0.3)))


def test_parse_caption_reads_the_generators_vocabulary():
  p = grounding.parse_caption("Two big violet discs and a red one are left of the box.")
  m = p.mentions
  assert (m[0].count, m[0].size, m[0].colour, m[0].shape) == (2, "large", "purple", "circle")
  assert (m[1].count, m[1].size, m[1].colour, m[1].shape) == (None, None, "red", None)
  assert (m[2].colour, m[2].shape) == (None, "square")
  assert p.relations == ((1, "left of", 2),)
  p = grounding.parse_caption("Beneath the star sits a little cyan triangle.")
  assert p.relations == ((1, "below", 0),)
  p = grounding.parse_caption("The square is small and blue, while a star and a disc are near "
                              "each other.")
  assert (p.mentions[0].size, p.mentions[0].colour) == ("small", "blue")
  assert p.relations == ((1, "next to", 2),)
  p = grounding.parse_caption("There is no green cross, and an object.")
  assert p.mentions[0].negated and not p.mentions[1].named


@pytest.mark.parametrize("caption, expected", [
  # (caption, (num_mentioned, num_correct, num_recalled, relations, relations held, counts,
  #  counts correct))
  ("A red circle is to the left of a blue square.", (2, 2, 2, 1, 1, 0, 0)),
  ("A green circle is to the left of a blue square.", (2, 1, 1, 0, 0, 0, 0)),
  ("A red circle is to the right of a blue square.", (2, 2, 2, 1, 0, 0, 0)),
  ("Left of the blue square is a red circle.", (2, 2, 2, 1, 1, 0, 0)),
  ("A red disc and a blue box are next to each other.", (2, 2, 2, 1, 0, 0, 0)),
  ("The blue star is above the square.", (2, 2, 2, 1, 1, 0, 0)),
  ("The blue star is below the square.", (2, 2, 2, 1, 0, 0, 0)),
  ("A small red circle.", (1, 0, 0, 0, 0, 0, 0)),
  ("The circle is blue.", (1, 0, 0, 0, 0, 0, 0)),
  ("Two blue shapes and a red star.", (3, 2, 2, 0, 0, 1, 1)),
  ("Three blue squares.", (3, 1, 1, 0, 0, 1, 0)),
  ("There are three objects but no triangle.", (0, 0, 0, 0, 0, 1, 1)),
  ("A blue one, a blue one and a blue one.", (3, 3, 2, 0, 0, 0, 0)),
])
def test_grounding_scores_hand_written_captions(caption, expected):
  r = grounding.ground_caption(caption, HAND)
  got = tuple(r[k] for k in ("num_mentioned", "num_correct", "num_recalled", "num_relations",
                             "num_relations_held", "num_counts", "num_counts_correct"))
  assert got == expected, r


def test_grounding_metrics_pool_over_captions():
  caps = ["A red circle is to the left of a blue square.",  # all right
          "A red star is to the right of a blue square.",  # wrong shape: unresolved relation
          "The blue star is below the red circle."]  # false relation
  metrics, per_caption = grounding.grounding_metrics(caps, [HAND, HAND.to_json(), HAND])
  assert metrics["mention_precision"] == pytest.approx(5 / 6)
  assert metrics["mention_recall"] == pytest.approx(5 / 9)
  assert metrics["relation_accuracy"] == pytest.approx(1 / 2)
  assert metrics["num_relations_unresolved"] == 1
  assert [r["relations"][0]["holds"] for r in per_caption] == [True, None, False]
  assert all(isinstance(v, float) for v in metrics.values())


# Independent answer checking: names and geometry from first principles.
_SHAPE = {w: k for k, pairs in shapes.SHAPE_WORDS.items() for pair in pairs for w in pair}
_COLOUR = {w: k for k, ws in shapes.COLOUR_WORDS.items() for w in ws}
_SIZE = {w: k for k, ws in shapes.SIZE_WORDS.items() for w in ws}
_REL = {p: r for r, ps in shapes.RELATION_PHRASES.items() for p in ps}
_REL_RE = "|".join(sorted(map(re.escape, _REL), key=len, reverse=True))


def _select(objs, phrase):
  """Objects fitting a phrase such as 'big red disc', 'red things' or 'objects'."""
  size = colour = shape = None
  for w in phrase.split():
    size = _SIZE.get(w, size)
    colour = _COLOUR.get(w, colour)
    shape = _SHAPE.get(w, shape)
  return [o for o in objs if size in (None, o.size) and colour in (None, o.colour)
          and shape in (None, o.shape)]


def _side(a, rel, b):
  """Whether a's centre is on the `rel` side of b's (plain geometry, y down)."""
  return {"left of": a.x < b.x, "right of": a.x > b.x, "above": a.y < b.y,
          "below": a.y > b.y}[rel]


def _gap(a, b):
  return math.hypot(a.x - b.x, a.y - b.y) - shapes.RADIUS[a.size] - shapes.RADIUS[b.size]


def _check_answer(objs, question, answer, kind):
  q = question.lower().rstrip("?")
  if kind == "count":
    thing = re.match(r"how many (.+?) (are there|are in the picture|can you see)$", q).group(1)
    assert answer == str(len(_select(objs, thing)))
  elif kind == "exists":
    thing = re.match(r"(is there|can you see) an? (.+?)( in the picture)?$", q).group(2)
    assert answer == ("yes" if _select(objs, thing) else "no")
  elif kind in ("colour", "shape", "size"):
    m = re.match(r"which shape is (\w+)$", q)
    thing = m.group(1) if m else re.search(r"the (.+?)( have| small or large| big or small)?$",
                                            q).group(1)
    (o,) = _select(objs, thing)
    assert answer == {"colour": o.colour, "shape": o.shape, "size": o.size}[kind]
  else:
    assert kind == "relation"
    m = re.match(rf"is the (.+?) ({_REL_RE}) the (.+)$", q)
    if m:
      (a,), rel, (b,) = _select(objs, m.group(1)), _REL[m.group(2)], _select(objs, m.group(3))
      if rel == "next to":
        assert _gap(a, b) < 0.15 if answer == "yes" else _gap(a, b) > 0.25
      else:
        assert _side(a, rel, b) == (answer == "yes")
      return
    m = re.search(rf"({_REL_RE}) the (.+)$", q)
    rel, (anchor,) = _REL[m.group(1)], _select(objs, m.group(2))
    others = [o for o in objs if o is not anchor]
    if rel == "next to":
      target = min(others, key=lambda o: _gap(o, anchor))
      assert _gap(target, anchor) < 0.15
    else:
      (target,) = [o for o in others if _side(o, rel, anchor)]
    expected = {"what is": f"{target.colour} {target.shape}", "what shape": target.shape,
                "what color": target.colour}[" ".join(q.split()[:2])]
    assert answer == expected


def test_answers_are_right_for_their_scenes(examples):
  kinds = set()
  for ex in examples:
    objs = Scene.from_json(ex["scene"]).objects
    assert 1 <= len(ex["questions"]) <= CONFIG.num_questions
    assert len(set(ex["questions"])) == len(ex["questions"])
    for question, answer, kind in zip(ex["questions"], ex["answers"], ex["question_types"],
                                      strict=True):
      assert kind in shapes.QUESTION_TYPES and 1 <= len(answer.split()) <= 2
      try:
        _check_answer(objs, question, answer, kind)
      except (AssertionError, AttributeError, ValueError) as e:
        raise AssertionError(f"{question!r} -> {answer!r} ({kind}) in {ex['scene']}") from e
      kinds.add(kind)
  assert kinds == set(shapes.QUESTION_TYPES)
  answers = [a for ex in examples for a, t in zip(ex["answers"], ex["question_types"],
                                                  strict=True) if t == "exists"]
  assert 0.3 < answers.count("yes") / len(answers) < 0.7


def test_personalities_have_their_own_voices(examples):
  assert len(shapes.PERSONALITIES) >= 10
  world = set(shapes.NUMBER_WORDS) | {"a", "an", "the", "and"}
  for table in (shapes.SHAPE_WORDS, shapes.COLOUR_WORDS, shapes.SIZE_WORDS):
    world |= {w for v in table.values() for x in v for w in (x if isinstance(x, tuple) else (x,))}
  vocab = {p: set() for p in shapes.PERSONALITIES}
  for ex in examples[:150]:
    assert list(ex["comments"]) == list(shapes.PERSONALITIES)
    for p, text in ex["comments"].items():
      vocab[p] |= set(re.findall(r"[a-z]+", text.lower())) - world
  for p, words in vocab.items():
    for q, other in vocab.items():
      if p < q:
        assert len(words & other) / len(words | other) < 0.25, (p, q, words & other)
  comments = {ex["comments"]["Happy"] for ex in examples[:50]}
  assert len(comments) >= 30  # templates and objects vary


def test_stories_have_one_text_per_frame_in_each_style():
  assert len(shapes.STORY_STYLES) >= 2
  config = WorldConfig(story_frames=(3, 5))
  events = set()
  for index in range(40):
    st = shapes.story("train", index, config)
    frames = len(st["scenes"])
    assert 3 <= frames <= 5 and len(st["images"]) == len(st["events"]) == frames
    assert all(im.shape == (64, 64, 3) for im in st["images"])
    for style in shapes.STORY_STYLES:
      texts = st["sentences"][style]
      assert len(texts) == frames and all(t.strip() for t in texts)
      assert all(1 <= len(re.findall(r"[.!?](\s|$)", t)) <= 3 for t in texts), texts
    styles = [st["sentences"][s] for s in shapes.STORY_STYLES]
    assert all(a != b for i, a in enumerate(styles) for b in styles[i + 1:])
    for before, after, event in zip(st["scenes"][:-1], st["scenes"][1:], st["events"][1:],
                                    strict=True):
      events.add(event["event"])
      if event["event"] == "move":
        assert before.objects[event["object"]] != after.objects[event["object"]]
      if event["event"] == "appear":
        assert len(after.objects) == len(before.objects) + 1
      if event["event"] == "disappear":
        assert len(after.objects) == len(before.objects) - 1
      if event["event"] == "recolour":
        assert after.objects[event["object"]].colour != event["was"]
      if "relation" in event and event["relation"] != "next to":
        assert _side(after.objects[event["object"]], event["relation"],
                     after.objects[event["other"]])
  assert {"move", "appear", "disappear", "recolour"} <= events


def test_show_cli_writes_a_png(tmp_path):
  out = os.path.join(tmp_path, "grid.png")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  subprocess.run([sys.executable, "-m", "mmzoo.data.shapes", "--show", "3", "--out", out,
                  "--split", "test", "--image_size", "64"], check=True, cwd=REPO, env=env,
                 capture_output=True)
  with Image.open(out) as grid:
    assert grid.format == "PNG" and grid.width >= 3 * 64
