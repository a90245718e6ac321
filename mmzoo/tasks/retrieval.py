"""Image<->text retrieval with a joint embedding (VSE, VSE++, order embeddings).

Training walks (image, caption) pairs, k captions per image (vsepp's layout), and
minimises a ranking loss whose negatives come from the global batch
(`losses.global_contrastive_loss` over the mesh's 'data' axis). Evaluation
embeds every image and every caption of a split and hands them to the
"retrieval" evaluator (R@K, median and mean rank, rsum).
"""

from __future__ import annotations

import functools
import math
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmzoo import losses
from mmzoo.data import images as image_ops
from mmzoo.data import pipeline, sources, tokenizers
from mmzoo.errors import InputError
from mmzoo.eval import registry
from mmzoo.models import vse
from mmzoo.tasks import common
from mmzoo.train import parallel


class RetrievalTask:
  """Binds a `vse.JointEmbedding`, its pair data and the "retrieval" evaluator.

  Args:
    config: a `mmzoo/configs/{vse,vsepp,order}.py`-style config.
    artifacts: a restored checkpoint's artifacts (its tokenizer); None builds
      the tokenizer from the training captions.
  """

  def __init__(self, config: ml_collections.ConfigDict, artifacts: dict | None = None):
    self.config = config
    data = config.data
    self.precomputed = data.source == "precomp"
    self.splits = sources.open_splits(data, ("train", "validation", "test"))
    if artifacts:
      self.tokenizer = tokenizers.from_artifact(artifacts["tokenizer"])
    else:
      kwargs = ({"min_count": data.min_count} if data.tokenizer == "word"
                else {"vocab_size": data.vocab_size})
      self.tokenizer = tokenizers.build(data.tokenizer, sources.captions_of(self.splits["train"]),
                                        **kwargs)
    m = config.model
    self.model = vse.JointEmbedding(
        vocab_size=self.tokenizer.vocab_size, embed_dim=m.embed_dim,
        encoder="precomputed" if self.precomputed else m.encoder,
        encoder_kwargs=common.encoder_kwargs(m),
        frozen_encoder=m.frozen_encoder, text_kind=m.text_kind, word_dim=m.word_dim,
        text_hidden=m.text_hidden, text_pooling=m.text_pooling, space=m.space)
    self.k = data.captions_per_image
    self.tokens_per_batch = data.batch_size
    self.mesh = parallel.make_mesh()
    loss = config.loss
    if loss.kind == "hinge":
      fn = functools.partial(losses.contrastive_loss, margin=loss.margin, score=self.score)
      self._loss = losses.global_contrastive_loss(fn, self.mesh)
      if loss.max_violation:
        self._hardest = losses.global_contrastive_loss(
            functools.partial(fn, max_violation=True), self.mesh)
    elif loss.kind == "softmax":
      fn = functools.partial(losses.softmax_contrastive_loss, temperature=loss.temperature,
                             score=self.score)
      self._loss = losses.global_contrastive_loss(fn, self.mesh)
    else:
      raise InputError(f"unknown loss.kind {loss.kind!r}; use hinge or softmax")
    self._embed_images = jax.jit(lambda params, images: self._images(params, images)[0])
    # Shapes: a caption true of another image of the batch is no negative of it.
    self.semantic_negatives = data.source == "shapes" and config.loss.get(
        "semantic_negatives", False)
    self._embed_captions = jax.jit(self._captions)

  @property
  def score(self) -> str:
    """How the joint space compares an image with a caption."""
    return "order" if self.config.model.space == "order" else "dot"

  # --- Inputs. ---

  def _image_input(self, image: jax.Array) -> jax.Array:
    if self.precomputed:
      return image.astype(jnp.float32)
    d = self.config.data
    return image_ops.normalize(image, tuple(d.mean), tuple(d.std))

  def _transform(self, train: bool):
    d = self.config.data
    max_len = d.max_len

    def transform(record: dict, rng: np.random.Generator | None) -> dict:
      image = record["image"]
      if not self.precomputed:
        image = image_ops.pixels(image)
        image = (image_ops.augment(image, rng, d.crop_size, d.flip) if train and rng is not None
                 else image_ops.center_crop(image, d.crop_size))
      caption = record.get("caption", record["captions"][0])
      caption = caption.decode("utf-8") if isinstance(caption, bytes) else caption
      ids, length = tokenizers.pad([self.tokenizer.encode(caption, add_eos=True)], max_len)
      # Pairs of the same image, or with the same caption text, are not negatives.
      match_ids = np.array([record.get("image_index", -1),
                            zlib.crc32(ids[0].tobytes()) & 0x7FFFFFFF], np.int32)
      out = {"image": np.asarray(image), "tokens": ids[0], "length": length[0],
             "match_ids": match_ids}
      if self.semantic_negatives:
        out["image_keys"], out["caption_keys"] = shapes_keys(common.text(record["scene"]), caption)
      return out

    return transform

  # --- What the trainer needs. ---

  def init_params(self, rng: jax.Array):
    d = self.config.data
    record = self.splits["train"][0]
    image = jnp.asarray(record["image"] if self.precomputed
                        else image_ops.pixels(record["image"]))[None]
    if not self.precomputed and d.crop_size:
      image = image[:, :d.crop_size, :d.crop_size]
    tokens = jnp.ones((1, d.max_len), jnp.int32)
    return self.model.init(rng, self._image_input(image), tokens, jnp.ones((1,), jnp.int32))

  def trainable(self, params):
    return common.trainable(params, self.config.model.frozen_encoder)

  def init_task_state(self):
    return {}

  def _images(self, params, images, train: bool = False):
    """Image embeddings; in training, also the BatchNorm statistics of this batch."""
    inputs = self._image_input(images)
    if train and "batch_stats" in params and not self.config.model.frozen_encoder:
      return self.model.apply(params, inputs, True, method=self.model.embed_images,
                              mutable=["batch_stats"])
    return self.model.apply(params, inputs, method=self.model.embed_images), {}

  def _captions(self, params, tokens, lengths):
    return self.model.apply(params, tokens, lengths, method=self.model.embed_captions)

  def loss_fn(self, params, task_state, batch, rng):
    del rng
    image_emb, new_stats = self._images(params, batch["image"], train=True)
    caption_emb = self._captions(params, batch["tokens"], batch["length"])
    loss = self.config.loss
    keys = ((batch["image_keys"], batch["caption_keys"]) if self.semantic_negatives else None)
    if loss.kind == "hinge" and loss.max_violation:
      # VSE++'s hardest negatives, after `max_violation_warmup` steps of the sum over all
      # negatives: from random init the hardest negative alone can collapse the space.
      warm = batch["step"][0] < loss.get("max_violation_warmup", 0)
      total = jax.lax.cond(warm, self._loss, self._hardest, image_emb, caption_emb,
                           batch["match_ids"], keys)
    else:
      total = self._loss(image_emb, caption_emb, batch["match_ids"], keys)
    count = jnp.asarray(batch["tokens"].shape[0], jnp.float32)
    return total, ({"loss": (total, count)}, task_state, dict(new_stats))

  def train_batches(self):
    d = self.config.data
    parallel.check_batch_size(d.batch_size, "data.batch_size")
    pairs = pipeline.CaptionPairs(self.splits["train"], self.k)
    return pipeline.Counted(pipeline.train_batches(
        pairs, self._transform(train=True), d.batch_size // jax.process_count(),
        self.config.seed, read_threads=d.read_threads))

  def evaluate(self, params, mesh, split: str = "validation") -> dict[str, float]:
    return registry.run(self.config.eval.evaluators, self, params, mesh, split)

  def artifacts(self) -> dict:
    return {"tokenizer": self.tokenizer.to_artifact()}

  def on_train_end(self, params) -> None:
    del params

  # --- What the evaluators and tools need. ---

  def split(self, split: str):
    if split not in self.splits:
      raise InputError(f"the retrieval task has splits {sorted(self.splits)}, not {split!r}")
    source = self.splits[split]
    limit = self.config.eval.get("max_images", 0)
    if limit and limit < len(source):
      source = common.Subset(source, range(limit))
    return source

  def _embed_all(self, params, mesh, source, embed) -> np.ndarray:
    """Embeds every element of `source` in order: `<float32>[len(source), D]`."""
    return common.map_split(source, self._transform(train=False), self.config.eval.batch_size,
                            mesh, lambda batch: embed(params, batch))

  def retrieval_embeddings(self, params, mesh, split: str = "validation"):
    """`(images [N, D], captions [kN, D], k, score)` for the "retrieval" evaluator."""
    source = self.split(split)
    image_emb = self._embed_all(params, mesh, source,
                                lambda p, b: self._embed_images(p, b["image"]))
    caption_emb = self._embed_all(
        params, mesh, pipeline.CaptionPairs(source, self.k),
        lambda p, b: self._embed_captions(p, b["tokens"], b["length"]))
    return image_emb, caption_emb, self.k, self.score

  def encode_text(self, params, texts: list[str]) -> np.ndarray:
    """Joint-space embeddings of sentences (or single words): `[len(texts), D]`."""
    ids, lengths = tokenizers.pad([self.tokenizer.encode(t, add_eos=True) for t in texts],
                                  self.config.data.max_len)
    return np.asarray(self._embed_captions(params, jnp.asarray(ids), jnp.asarray(lengths)))

  def encode_images(self, params, pixels: np.ndarray) -> np.ndarray:
    """Joint-space embeddings of uint8 images `[n, S, S, 3]` (or features)."""
    if not self.precomputed:
      pixels = np.stack([image_ops.center_crop(p, self.config.data.crop_size) for p in pixels])
    return np.asarray(self._embed_images(params, jnp.asarray(pixels)))


  # --- Queries: nearest neighbours and multimodal arithmetic. ---

  def check_words(self, text: str) -> None:
    """Rejects words the tokenizer's vocabulary lacks (word vocabularies only)."""
    vocab = self.tokenizer
    if isinstance(vocab, tokenizers.WordVocab):
      unknown = [w for w in tokenizers.normalize([text])[0] if w not in vocab.index]
      if unknown:
        raise InputError(f"not in the vocabulary: {', '.join(map(repr, unknown))} (query "
                         f"{text!r}); known words include {', '.join(vocab.words[4:14])}, ...")

  def split_images(self, params, split: str) -> np.ndarray:
    """Embeddings of a split's images (cached per params object)."""
    key = (id(params), split)
    if getattr(self, "_image_cache_key", None) != key:
      source = self.split(split)
      self._image_cache = self._embed_all(params, self.mesh, source,
                                          lambda p, b: self._embed_images(p, b["image"]))
      self._image_cache_key = key
    return self._image_cache

  def nearest(self, queries: np.ndarray, candidates: np.ndarray, k: int,
              exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(indices [Q, k], scores [Q, k])` of the best-scoring candidates per query."""
    scores = np.array(losses.pairwise_scores(jnp.asarray(queries), jnp.asarray(candidates),
                                               self.score))
    if exclude is not None:
      scores[np.arange(len(queries)), exclude] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)

  def to_space(self, x: np.ndarray) -> np.ndarray:
    """Projects a sum of joint-space vectors back into the space (unit norm, non-negative)."""
    if self.config.model.space == "order":
      x = np.maximum(x, 0.0)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)

  def arithmetic(self, params, image_vector: np.ndarray, terms: list[tuple[str, str]]
                 ) -> np.ndarray:
    """image - word + word ... in the joint space (Kiros et al. 2014, section 5.3)."""
    for _, word in terms:
      self.check_words(word)
    words = self.encode_text(params, [w for _, w in terms]) if terms else None
    out = np.array(image_vector, np.float32)
    for (sign, _), vector in zip(terms, words if words is not None else [], strict=True):
      out = out + vector if sign == "+" else out - vector
    return self.to_space(out)

  def arithmetic_accuracy(self, params, split: str = "test", k: int = 5,
                          max_queries: int = 0) -> dict[str, float]:
    """Shapes only: image - colour + colour' over the one-object images of a split.

    Every one-object image is a query once per other colour; the candidates are
    the split's other one-object images, and a query succeeds when one of its
    `k` nearest has colour'. `arithmetic_chance` is the same rate for `k`
    candidates drawn at random (exact, hypergeometric), for comparison.
    """
    from mmzoo.data import shapes

    if self.config.data.source != "shapes":
      raise InputError("arithmetic accuracy needs the shapes world's scenes")
    source = self.split(split)
    scenes = [shapes.Scene.from_json(common.text(source[i]["scene"])) for i in range(len(source))]
    single = np.array([i for i, s in enumerate(scenes) if len(s.objects) == 1])
    if len(single) <= k:
      raise InputError(f"too few one-object images in the {split} split ({len(single)})")
    colour = np.array([scenes[i].objects[0].colour for i in single])
    image_emb = self.split_images(params, split)[single]
    words = dict(zip(shapes.COLOURS, self.encode_text(params, list(shapes.COLOURS)),
                     strict=True))
    queries, targets, rows = [], [], []
    for row, c in enumerate(colour):
      for other in shapes.COLOURS:
        if other != c:
          queries.append(image_emb[row] - words[c] + words[other])
          targets.append(other)
          rows.append(row)
    if max_queries:
      queries, targets, rows = queries[:max_queries], targets[:max_queries], rows[:max_queries]
    found, _ = self.nearest(self.to_space(np.stack(queries)), image_emb, k,
                            exclude=np.array(rows))
    hits = [bool(np.any(colour[f] == t)) for f, t in zip(found, targets, strict=True)]
    n = len(single) - 1
    chance = [1.0 - math.comb(n - int(np.sum(colour == t)), k) / math.comb(n, k)
              for t in targets]
    return {f"arithmetic_top{k}": 100.0 * float(np.mean(hits)),
            "arithmetic_chance": 100.0 * float(np.mean(chance)),
            "arithmetic_queries": float(len(hits))}


_MAX_MENTIONS = 4


@functools.cache
def _shape_properties() -> dict[tuple[str, str, str], int]:
  from mmzoo.data import shapes

  combos = [(z, c, s) for z in shapes.SIZES for c in shapes.COLOURS for s in shapes.SHAPES]
  return {combo: i for i, combo in enumerate(combos)}


def shapes_keys(scene_json: str, caption: str) -> tuple[np.ndarray, np.ndarray]:
  """`(image_keys <bool>[K], caption_keys <bool>[M, K])` for `losses.keys_match`.

  K indexes the (size, colour, shape) objects of the shapes world. The image
  holds its scene's objects; each object mention of the caption (the grounding
  parser's, at most M) requires one object with the attributes it states.
  Relations and counts are not checked, so a caption counts as true of more
  images than it is, which only spares negatives.
  """
  from mmzoo.data import shapes
  from mmzoo.eval import grounding

  index = _shape_properties()
  image = np.zeros(len(index), bool)
  for o in shapes.Scene.from_json(scene_json).objects:
    image[index[(o.size, o.colour, o.shape)]] = True
  requirements = np.ones((_MAX_MENTIONS, len(index)), bool)
  mentions = [m for m in grounding.parse_caption(caption).mentions if m.named and not m.negated]
  for row, m in enumerate(mentions[:_MAX_MENTIONS]):
    requirements[row] = [(m.size in (None, z)) and (m.colour in (None, c)) and
                         (m.shape in (None, s)) for z, c, s in index]
  return image, requirements
