"""The data layer: image decoding, real-format readers, builders, tokenizers, pipelines."""

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import launcher, launcher_env
from PIL import Image

from mmzoo.data import builders, images, pipeline, readers, tokenizers
from mmzoo.errors import InputError

# --- images -------------------------------------------------------------------------------


def _save(path, array, mode=None, **kw):
  Image.fromarray(array, mode).save(path, **kw)
  return str(path)


def test_decode_converts_every_mode_to_rgb_and_any_aspect_to_a_square(tmp_path):
  rng = np.random.default_rng(0)
  rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
  cases = {
      "rgba.png": (rgba, "RGBA"),
      "gray.png": (rng.integers(0, 256, (6, 3), dtype=np.uint8), "L"),
      "one.png": (np.array([[[10, 200, 30]]], np.uint8), None),
      "wide.jpg": (rng.integers(0, 256, (10, 4000, 3), dtype=np.uint8), None),
      "tall.jpg": (rng.integers(0, 256, (4000, 10, 3), dtype=np.uint8), None),
  }
  for name, (array, mode) in cases.items():
    out = images.load(_save(tmp_path / name, array, mode), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8, name
  # Alpha is dropped, not blended: the RGB channels survive unchanged at full size.
  np.testing.assert_array_equal(
      np.asarray(images.decode(open(tmp_path / "rgba.png", "rb").read(), "x")), rgba[..., :3])
  # Grayscale becomes equal R, G and B.
  gray = images.load(str(tmp_path / "gray.png"), 6)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  # A 1x1 image becomes a flat square of its colour.
  np.testing.assert_array_equal(images.load(str(tmp_path / "one.png"), 4),
                                np.broadcast_to([10, 200, 30], (4, 4, 3)))
  # Palette images, with and without transparency, and 16-bit grayscale.
  pal = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P")
  pal.save(tmp_path / "pal.png")
  pal.save(tmp_path / "pal_t.png", transparency=0)
  Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(tmp_path / "i16.png")
  for name in ("pal.png", "pal_t.png", "i16.png"):
    assert images.load(str(tmp_path / name), 8).shape == (8, 8, 3)
  i16 = images.load(str(tmp_path / "i16.png"), 8)
  assert i16.min() == 0 and i16.max() == 255


@pytest.mark.parametrize("name,content,reason", [
    ("zero.jpg", b"", "empty file"),
    ("text.jpg", b"this is not an image\n", "cannot decode image"),
    ("truncated.jpg", None, "truncated"),
])
def test_bad_image_files_are_named_with_the_problem(tmp_path, name, content, reason):
  path = tmp_path / name
  if content is None:
    full = tmp_path / "full.jpg"
    _save(full, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    content = full.read_bytes()[:-200]
    # The truncated file opens fine; only decoding its pixels fails.
    Image.open(io_bytes(content))
  path.write_bytes(content)
  with pytest.raises(InputError, match=reason) as e:
    images.load(str(path), 16)
  assert str(e.value).startswith(str(path))


def io_bytes(data):
  import io

  return io.BytesIO(data)


def test_our_png_round_trips_through_pillow_and_the_fast_path_and_names_damage():
  rng = np.random.default_rng(3)
  pixels = rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)
  data = images.encode(pixels)
  # Pillow, the independent reader, sees the same pixels; so does our fast path.
  np.testing.assert_array_equal(np.asarray(Image.open(io_bytes(data))), pixels)
  assert images._plain_png(data) is not None
  np.testing.assert_array_equal(images.pixels(data), pixels)
  # A Pillow-written PNG (filtered rows) is not ours, and decodes through Pillow.
  buf = io_bytes(b"")
  Image.fromarray(pixels).save(buf, format="PNG")
  assert images._plain_png(buf.getvalue()) is None
  np.testing.assert_array_equal(images.pixels(buf.getvalue()), pixels)
  # Truncated, or one flipped byte inside the compressed pixels: named, not garbage.
  flipped = bytearray(data)
  flipped[60] ^= 0xFF
  for bad in (data[:-40], bytes(flipped)):
    with pytest.raises(InputError, match="shard-7: cannot decode image"):
      images.pixels(bad, "shard-7")


def test_missing_image_file():
  with pytest.raises(InputError, match="/nope.jpg: no such file"):
    images.load("/nope.jpg", 16)


def test_augment_crops_and_flips_deterministically_and_normalize_matches_formula():
  pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
  a = images.augment(pixels, np.random.default_rng(1), 5, True)
  b = images.augment(pixels, np.random.default_rng(1), 5, True)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (5, 5, 3)
  flips = {images.augment(pixels, np.random.default_rng(s), None, True)[0, 0, 0] for s in
           range(20)}
  assert flips == {pixels[0, 0, 0], pixels[0, -1, 0]}
  np.testing.assert_array_equal(images.center_crop(pixels, 4), pixels[2:6, 2:6])
  x = np.array([[[0, 128, 255]]], np.uint8)
  expected = (np.array([0, 128, 255]) / 255.0 - np.array(images.IMAGENET_MEAN)) / np.array(
      images.IMAGENET_STD)
  np.testing.assert_allclose(np.asarray(images.normalize(x))[0, 0], expected, rtol=1e-5)


# --- readers ------------------------------------------------------------------------------


def _karpathy(tmp_path, entries):
  path = tmp_path / "dataset_test.json"
  path.write_text(json.dumps({"images": entries}))
  return str(path)


def _entry(name, split, *captions, **extra):
  return {"filename": name, "split": split, "imgid": extra.pop("imgid", 0),
          "sentences": [{"raw": c, "tokens": c.lower().split()} for c in captions], **extra}


def test_karpathy_reader_folds_restval_into_train_unless_kept(tmp_path):
  path = _karpathy(tmp_path, [
      _entry("a.jpg", "train", "A cat.", imgid=1), _entry("b.jpg", "restval", "A dog.", imgid=2),
      _entry("c.jpg", "val", "A cow.", imgid=3), _entry("d.jpg", "test", "A hen.", imgid=4,
                                                        filepath="val2014")])
  records = readers.read_karpathy(path)
  assert [(r.split, r.image_id, r.path) for r in records] == [
      ("train", 1, "a.jpg"), ("train", 2, "b.jpg"), ("validation", 3, "c.jpg"),
      ("test", 4, "val2014/d.jpg")]
  kept = readers.read_karpathy(path, keep_restval=True)
  assert kept[1].split == "restval"
  assert records[0].captions == ("A cat.",)


def test_karpathy_reader_bad_records_fail_or_skip(tmp_path):
  entries = [_entry("ok.jpg", "train", "fine caption"),
             {"filename": "nokey.jpg", "split": "train", "imgid": 5},
             _entry("empty.jpg", "train", "   "),
             _entry("long.jpg", "train", "word " * 2000)]
  path = _karpathy(tmp_path, entries)
  with pytest.raises(InputError, match=r"dataset_test.json: nokey.jpg: no captions"):
    readers.read_karpathy(path, readers.BadData("fail"))
  bad = readers.BadData("skip")
  records = readers.read_karpathy(path, bad, max_words=50)
  assert [r.path for r in records] == ["ok.jpg", "long.jpg"]
  assert len(records[1].captions[0].split()) == 50 and bad.truncated == 1
  assert [s["reason"].split(":")[0] for s in bad.skipped] == ["nokey.jpg", "empty.jpg"]


def test_reader_whole_file_problems_always_stop(tmp_path):
  (tmp_path / "bad.json").write_text("{not json")
  (tmp_path / "list.json").write_text("[1, 2]")
  with pytest.raises(InputError, match="bad.json: not valid JSON"):
    readers.read_karpathy(str(tmp_path / "bad.json"), readers.BadData("skip"))
  with pytest.raises(InputError, match="list.json: not a Karpathy-split file"):
    readers.read_karpathy(str(tmp_path / "list.json"), readers.BadData("skip"))
  with pytest.raises(InputError, match="missing.json: no such file"):
    readers.read_coco_annotations(str(tmp_path / "missing.json"))


def test_invalid_utf8_is_decoded_with_a_warning_naming_the_file(tmp_path, caplog):
  path = tmp_path / "dataset_x.json"
  path.write_bytes(b'{"images": [{"filename": "a.jpg", "split": "train", "sentences": '
                   b'[{"raw": "caf\xe9 au lait"}]}]}')
  records = readers.read_karpathy(str(path))
  assert records[0].captions == ("caf\ufffd au lait",)
  assert any(str(path) in r.getMessage() and "UTF-8" in r.getMessage() for r in caplog.records)


def test_coco_annotation_and_results_readers(tmp_path):
  ann = {"images": [{"id": 7, "file_name": "x.jpg"}, {"id": 9, "file_name": "y.jpg"}],
         "annotations": [{"image_id": 7, "caption": "A cat."}, {"image_id": 7, "caption": "Cat!"},
                         {"image_id": 9, "caption": ""}, {"image_id": 9}]}
  path = tmp_path / "captions.json"
  path.write_text(json.dumps(ann))
  with pytest.raises(InputError, match=r"captions.json: annotations\[2\] \(image 9\): caption"):
    readers.read_coco_annotations(str(path))
  bad = readers.BadData("skip")
  records = readers.read_coco_annotations(str(path), bad, "validation")
  assert [(r.image_id, r.path, r.split, r.captions) for r in records] == [
      (7, "x.jpg", "validation", ("A cat.", "Cat!"))]
  assert [s["reason"] for s in bad.skipped] == [
      "annotations[2] (image 9): caption is missing or empty",
      "annotations[3] (image 9): no \"caption\" key", "y.jpg: image has no captions"]
  with pytest.raises(InputError, match=r"annotations\[3\] needs"):
    readers.caption_references(str(path))
  path.write_text(json.dumps({"annotations": ann["annotations"][:3]}))
  assert readers.caption_references(str(path)) == {"7": ["A cat.", "Cat!"], "9": [""]}
  res = tmp_path / "res.json"
  res.write_text(json.dumps([{"image_id": 7, "caption": "a cat"}, {"image_id": "9",
                                                                  "caption": "b"}]))
  assert readers.caption_predictions(str(res)) == {"7": "a cat", "9": "b"}
  res.write_text(json.dumps([{"image_id": 7, "caption": "a"}, {"image_id": 7, "caption": "b"}]))
  with pytest.raises(InputError, match="image 7 has more than one prediction"):
    readers.caption_predictions(str(res))
  res.write_text(json.dumps({"7": ["a", "b"]}))
  with pytest.raises(InputError, match="image 7: expected exactly one caption"):
    readers.caption_predictions(str(res))


def test_vsepp_precomp_reader(tmp_path):
  feats = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
  np.save(tmp_path / "test_ims.npy", feats)
  (tmp_path / "test_caps.txt").write_text("".join(f"caption {i}\n" for i in range(15)))
  ims, caps = readers.read_vsepp_precomp(str(tmp_path), "test")
  np.testing.assert_array_equal(ims, feats)
  assert caps[5] == "caption 5" and len(caps) == 15
  np.save(tmp_path / "dev_ims.npy", np.repeat(feats, 5, axis=0))  # one row per caption
  (tmp_path / "dev_caps.txt").write_text("".join(f"c {i}\n" for i in range(15)))
  np.testing.assert_array_equal(readers.read_vsepp_precomp(str(tmp_path), "dev")[0], feats)
  (tmp_path / "dev_caps.txt").write_text("".join(f"c {i}\n" for i in range(20)))
  with pytest.raises(InputError, match="dev_ims.npy: 15 images for 20 captions"):
    readers.read_vsepp_precomp(str(tmp_path), "dev")
  with pytest.raises(InputError, match="train_ims.npy: no such file"):
    readers.read_vsepp_precomp(str(tmp_path), "train")


def test_feature_file_reader(tmp_path):
  grid = np.random.default_rng(0).normal(size=(14, 14, 8)).astype(np.float32)
  np.save(tmp_path / "g.npy", grid)
  np.savez(tmp_path / "r.npz", features=grid[0], boxes=np.zeros((14, 4)))
  np.savez(tmp_path / "two.npz", a=grid[0], b=grid[1])
  np.save(tmp_path / "int.npy", np.zeros((3, 2), np.int32))
  np.save(tmp_path / "nan.npy", np.full((2,), np.nan, np.float32))
  (tmp_path / "junk.npy").write_bytes(b"junk")
  np.testing.assert_array_equal(readers.read_features(str(tmp_path / "g.npy")), grid)
  np.testing.assert_array_equal(readers.read_features(str(tmp_path / "r.npz")), grid[0])
  for name, problem in [("two.npz", "expected one"), ("int.npy", "expected floats"),
                        ("nan.npy", "NaN"), ("junk.npy", "not a readable"),
                        ("none.npy", "no such file")]:
    with pytest.raises(InputError, match=problem):
      readers.read_features(str(tmp_path / name))


# --- tokenizers ---------------------------------------------------------------------------

TRAIN = ["A red circle is left of a blue square.", "Two green triangles!",
         "The red circle is above the square", "a blue square , next to a star"] * 3


def test_word_vocab_comes_from_train_only_and_round_trips():
  vocab = tokenizers.WordVocab.build(TRAIN, min_count=3)
  assert vocab.words[:4] == list(tokenizers.SPECIALS)
  assert "red" in vocab.index and "hexagon" not in vocab.index
  assert "." not in vocab.index and "," not in vocab.index  # coco-caption drops punctuation
  ids = vocab.encode("The RED circle, next to a hexagon.", add_bos=True, add_eos=True)
  assert ids[0] == tokenizers.BOS_ID and ids[-1] == tokenizers.EOS_ID
  assert tokenizers.UNK_ID in ids  # "hexagon" was never in training
  assert vocab.decode(ids) == "the red circle next to a <unk>"
  known = "the red circle is left of a blue square"
  assert vocab.decode(vocab.encode(known)) == known
  restored = tokenizers.from_artifact(json.loads(json.dumps(vocab.to_artifact())))
  assert restored.encode(known) == vocab.encode(known)
  # Counts decide membership: min_count 4 drops words seen 3 times.
  assert "two" not in tokenizers.WordVocab.build(TRAIN, min_count=4).index


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_round_trips_any_text(model_type):
  sp = tokenizers.SentencePieceTokenizer.train(TRAIN * 5, vocab_size=400, model_type=model_type)
  for text in ["A red circle is left of a blue square.", "Ünïcode  spaces\tand 😀 emoji"]:
    ids = sp.encode(text, add_eos=True)
    assert ids[-1] == tokenizers.EOS_ID
    assert sp.decode(ids) == text
  restored = tokenizers.from_artifact(json.loads(json.dumps(sp.to_artifact())))
  assert restored.encode("red square") == sp.encode("red square")


def test_pad_truncates_and_keeps_lengths():
  ids, lengths = tokenizers.pad([[5, 6, 7], [8], list(range(10, 20))], 4)
  np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [8, 0, 0, 0], [10, 11, 12, 13]])
  np.testing.assert_array_equal(lengths, [3, 1, 4])


# --- builders, summary and pipelines ------------------------------------------------------


@pytest.fixture(scope="module")
def karpathy_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("karpathy")
  rng = np.random.default_rng(0)
  (root / "imgs").mkdir()
  entries = []
  for i in range(24):
    _save(root / "imgs" / f"{i}.jpg", rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8))
    split = "val" if i >= 20 else ("restval" if i % 5 == 0 else "train")
    entries.append(_entry(f"{i}.jpg", split, f"image {i} first", f"image {i} second", imgid=i))
  (root / "imgs" / "text.jpg").write_text("not an image")
  entries.append(_entry("text.jpg", "train", "a caption", imgid=100))
  entries.append(_entry("gone.jpg", "train", "a caption", imgid=101))
  (root / "dataset_tiny.json").write_text(json.dumps({"images": entries}))
  return root


def test_karpathy_builder_skips_bad_images_and_reads_back(karpathy_dir, tmp_path):
  builder = builders.karpathy_builder(str(karpathy_dir / "dataset_tiny.json"),
                                      str(karpathy_dir / "imgs"), str(tmp_path), image_size=16,
                                      on_bad="skip", workers=1)
  builders.prepare(builder)
  summary = builders.summary(builder)
  assert summary["splits"] == {"train": 20, "validation": 4}
  assert summary["captions"] == {"train": 40, "validation": 8}
  assert sorted(os.path.basename(s["file"]) for s in summary["skipped"]) == ["gone.jpg",
                                                                             "text.jpg"]
  source = pipeline.data_source(builder, "validation")
  record = source[0]
  pixels = images.pixels(record["image"])
  assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
  assert {c.decode() for c in record["captions"]} <= {f"image {i} {w}" for i in range(20, 24)
                                                      for w in ("first", "second")}
  with pytest.raises(InputError, match="has no split 'test'"):
    pipeline.data_source(builder, "test")


def test_karpathy_builder_fail_stops_at_the_first_bad_image(karpathy_dir, tmp_path):
  builder = builders.karpathy_builder(str(karpathy_dir / "dataset_tiny.json"),
                                      str(karpathy_dir / "imgs"), str(tmp_path), image_size=16,
                                      on_bad="fail", workers=1)
  with pytest.raises(InputError, match=r"text.jpg: cannot decode image"):
    builders.prepare(builder)


def test_prepare_data_launcher(karpathy_dir, tmp_path):
  common = launcher("prepare_data") + [
      "--format=karpathy", f"--annotations={karpathy_dir / 'dataset_tiny.json'}",
      f"--images_dir={karpathy_dir / 'imgs'}", f"--data_dir={tmp_path}", "--image_size=16",
      "--workers=1"]
  fail = subprocess.run(common, env=launcher_env(), capture_output=True, text=True)
  assert fail.returncode == 1
  errors = [line for line in fail.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "text.jpg: cannot decode image" in errors[0], fail.stderr
  assert "Traceback" not in fail.stderr
  ok = subprocess.run(common + ["--on_bad=skip"], env=launcher_env(), capture_output=True,
                      text=True)
  assert ok.returncode == 0, ok.stderr
  summary = json.loads((tmp_path / "karpathy_captions" / "summary.json").read_text())
  assert summary["splits"] == {"train": 20, "validation": 4}
  assert {os.path.basename(s["file"]) for s in summary["skipped"]} == {"text.jpg", "gone.jpg"}


class _Records:
  """A random-access source of numbered records, standing in for a data source."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"x": np.int64(i), "name": f"r{i}"}


def _identity(record, rng):
  out = dict(record)
  out["noise"] = np.float32(rng.random()) if rng is not None else np.float32(0)
  return out


def test_resumed_iterator_gives_the_same_batches():
  def make():
    return pipeline.train_batches(_Records(37), _identity, 4, seed=3, process_index=0,
                                  process_count=1)

  straight = make()
  expected = [next(straight) for _ in range(25)]  # crosses three epochs
  first = make()
  for _ in range(11):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  resumed = make()
  resumed.set_state(state)
  for want in expected[11:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["x"], want["x"])
    np.testing.assert_array_equal(got["noise"], want["noise"])
    assert got["name"] == want["name"]
  # Each epoch is a fresh permutation: the first 36 elements of epoch 1 are all distinct.
  epoch = np.concatenate([b["x"] for b in expected[:9]])
  assert len(set(epoch.tolist())) == 36
  assert not np.array_equal(expected[0]["x"], expected[10]["x"])


def test_process_shards_are_disjoint_and_complete():
  seen = []
  for p in range(3):
    batches = pipeline.eval_batches(_Records(20), _identity, 3, process_index=p, process_count=3)
    rows = [(b["x"], b["mask"]) for b in batches]
    assert len(rows) == 3  # ceil(ceil(20 / 3) / 3): the same on every process
    xs = np.concatenate([x for x, _ in rows])
    mask = np.concatenate([m for _, m in rows])
    seen.append(xs[mask > 0].tolist())
  flat = sum(seen, [])
  assert sorted(flat) == list(range(20))
  assert all(set(a).isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1:])
  train = [next(pipeline.train_batches(_Records(20), _identity, 6, seed=0, process_index=p,
                                       process_count=2))["x"] for p in range(2)]
  assert set(train[0].tolist()).isdisjoint(train[1].tolist())


def test_caption_transform_tokenizes_pads_and_picks_a_caption():
  vocab = tokenizers.WordVocab.build(TRAIN, min_count=1)
  record = {"image": np.zeros((8, 8, 3), np.uint8),
            "captions": [b"a red circle", b"two green triangles next to a blue square"],
            "image_id": b"42"}
  fn = pipeline.caption_transform(vocab, 5, train=True, crop_size=6, with_references=True)
  out = fn(record, np.random.default_rng(0))
  assert out["image"].shape == (6, 6, 3)
  assert out["tokens"].shape == (6,) and out["tokens"][0] == tokenizers.BOS_ID
  assert out["references"] == ["a red circle", "two green triangles next to a blue square"]
  assert out["image_id"] == "42"
  picked = {vocab.decode(fn(record, np.random.default_rng(s))["tokens"]) for s in range(20)}
  assert picked == {"a red circle", "two green triangles next to"}  # the second is truncated
  short = fn({**record, "caption": b"a red circle"}, None)
  np.testing.assert_array_equal(short["tokens"], [1] + vocab.encode("a red circle") + [2, 0])
  assert short["length"] == 4  # three words and eos


def test_coco_builder_reads_one_annotation_file_per_split(tmp_path):
  rng = np.random.default_rng(1)
  (tmp_path / "train2014").mkdir()
  (tmp_path / "val2014").mkdir()
  files = {}
  for split, folder, ids in [("train", "train2014", (1, 2, 3)), ("validation", "val2014", (7,))]:
    images_, annotations = [], []
    for i in ids:
      name = f"COCO_{folder}_{i:012d}.jpg"
      _save(tmp_path / folder / name, rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
      images_.append({"id": i, "file_name": name})
      annotations += [{"image_id": i, "caption": f"picture {i} one"},
                      {"image_id": i, "caption": f"picture {i} two"}]
    files[split] = tmp_path / f"captions_{folder}.json"
    files[split].write_text(json.dumps({"images": images_, "annotations": annotations}))
  builder = builders.coco_builder({s: str(p) for s, p in files.items()},
                                  {"train": str(tmp_path / "train2014"),
                                   "validation": str(tmp_path / "val2014")},
                                  str(tmp_path / "out"), image_size=8, workers=1)
  builders.prepare(builder)
  assert builders.summary(builder)["splits"] == {"train": 3, "validation": 1}
  record = pipeline.data_source(builder, "validation")[0]
  assert record["image_id"] == b"7" and len(record["captions"]) == 2


def test_shapes_dataset_bytes_do_not_depend_on_workers(tmp_path):
  built = []
  for workers in (1, 2):
    builders._RECORDS.clear()  # Render afresh, not from the cross-dataset cache.
    builder = builders.shapes_builder("vqa", str(tmp_path / f"w{workers}"), sizes=(70, 3, 0),
                                      workers=workers)
    builders.prepare(builder)
    source = pipeline.data_source(builder, "train")
    built.append([(source[i]["image"], list(source[i]["questions"])) for i in range(70)])
  assert built[0] == built[1]
  assert len({image for image, _ in built[0]}) == 70


def test_feature_source_replaces_images_with_feature_files(tmp_path):
  from mmzoo.tasks.captioning import FeatureSource

  grid = np.random.default_rng(0).normal(size=(4, 4, 8)).astype(np.float32)
  np.save(tmp_path / "7.npy", grid)
  np.savez(tmp_path / "9.npz", features=grid[0])
  source = [{"image": b"png bytes", "image_id": b"7", "captions": [b"a"]},
            {"image": b"png bytes", "image_id": 9, "captions": [b"b"]},
            {"image": b"png bytes", "image_id": b"11", "captions": [b"c"]}]
  features = FeatureSource(source, str(tmp_path))
  np.testing.assert_array_equal(features[0]["image"], grid)
  np.testing.assert_array_equal(features[1]["image"], grid[0])
  assert features[0]["captions"] == [b"a"] and len(features) == 3
  with pytest.raises(InputError, match="11.npz: no such file"):
    features[2]
