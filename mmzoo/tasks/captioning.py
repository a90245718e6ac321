"""Image captioning: Show and Tell, Show Attend and Tell, UpDown.

Two training phases share this task:
- cross-entropy with teacher forcing over (image, caption) pairs, with optional
  label smoothing, scheduled sampling (Bengio et al. 2015) and, for Show Attend
  and Tell, the doubly stochastic attention regulariser;
- self-critical sequence training (Rennie et al. 2017), started from a
  cross-entropy checkpoint (`scst.init_from`): per image, sampled captions are
  rewarded with CIDEr-D (document frequencies of the training references)
  minus the reward of the greedy caption, by policy gradient.

Evaluation decodes every image of a split (beam search by default) and hands
references and predictions to the "captions" evaluator (BLEU, ROUGE-L, CIDEr-D)
and, on the shapes world, to "grounding" (are the mentioned objects and
relations in the scene?).
"""

from __future__ import annotations

import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmzoo import decoding, losses
from mmzoo.data import images as image_ops
from mmzoo.data import pipeline, readers, sources, tokenizers
from mmzoo.errors import InputError
from mmzoo.eval import registry
from mmzoo.models import show_attend_tell, show_tell, updown
from mmzoo.tasks import common
from mmzoo.train import parallel


def build_model(config: ml_collections.ConfigDict, vocab_size: int, precomputed: bool):
  m = config.model
  shared = dict(vocab_size=vocab_size, embed_dim=m.embed_dim, hidden_size=m.hidden_size,
                dropout_rate=m.dropout_rate,
                encoder="precomputed" if precomputed else m.encoder,
                encoder_kwargs=() if precomputed else common.encoder_kwargs(m),
                frozen_encoder=m.frozen_encoder)
  if m.name == "show_tell":
    return show_tell.ShowTell(**shared, variant="vinyals")
  if m.name == "show_tell_rnn":
    return show_tell.ShowTell(**shared, variant="rnn")
  if m.name == "show_attend_tell":
    return show_attend_tell.ShowAttendTell(**shared, attention_dim=m.attention_dim,
                                           gate=m.gate)
  if m.name == "updown":
    return updown.UpDown(**shared, attention_dim=m.attention_dim)
  raise InputError(f"unknown captioning model {m.name!r}; use show_tell, show_tell_rnn, "
                   "show_attend_tell or updown")


class FeatureSource:
  """A captioned-image source whose images are replaced by precomputed feature files.

  The features of image `image_id` are `features_dir/<image_id>.npy` (or `.npz`).
  """

  def __init__(self, source, features_dir: str):
    self.source, self.features_dir = source, features_dir

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    record = dict(self.source[index])
    stem = os.path.join(self.features_dir, common.text(record["image_id"]))
    path = stem + ".npy" if os.path.exists(stem + ".npy") else stem + ".npz"
    record["image"] = readers.read_features(path)
    return record


class CaptioningTask:
  """Binds a captioner, its data, decoding and the caption evaluators."""

  def __init__(self, config: ml_collections.ConfigDict, artifacts: dict | None = None):
    self.config = config
    data = config.data
    self.precomputed = bool(data.get("features_dir"))
    if data.source == "precomp":
      raise InputError("captioning reads precomputed features per image: set "
                       "data.source=karpathy|coco and data.features_dir")
    self.splits = sources.open_splits(data, ("train", "validation", "test"))
    if self.precomputed:
      self.splits = {k: FeatureSource(v, data.features_dir) for k, v in self.splits.items()}
    if artifacts:
      self.tokenizer = tokenizers.from_artifact(artifacts["tokenizer"])
    else:
      kwargs = ({"min_count": data.min_count} if data.tokenizer == "word"
                else {"vocab_size": data.vocab_size})
      self.tokenizer = tokenizers.build(data.tokenizer, sources.captions_of(self.splits["train"]),
                                        **kwargs)
    self.model = build_model(config, self.tokenizer.vocab_size, self.precomputed)
    self.mesh = parallel.make_mesh()
    self.scst = bool(config.scst.enabled)
    self.tokens_per_batch = data.batch_size * data.max_len
    self._predictions_cache: tuple | None = None
    self._cider = None
    self._decode = jax.jit(self._decode_impl, static_argnames=("method",))

  # --- Inputs. ---

  def _image_input(self, image: jax.Array) -> jax.Array:
    if self.precomputed:
      return image.astype(jnp.float32)
    d = self.config.data
    return image_ops.normalize(image, tuple(d.mean), tuple(d.std))

  def _pixels(self, record: dict, rng: np.random.Generator | None, train: bool) -> np.ndarray:
    if self.precomputed:
      return np.asarray(record["image"], np.float32)
    d = self.config.data
    pixels = image_ops.pixels(record["image"])
    if train and rng is not None:
      return image_ops.augment(pixels, rng, d.crop_size, d.flip)
    return image_ops.center_crop(pixels, d.crop_size)

  def _caption_example(self, record: dict, rng: np.random.Generator | None) -> dict:
    caption = common.text(record.get("caption", record["captions"][0]))
    ids = self.tokenizer.encode(caption, add_bos=True, add_eos=True)
    tokens, length = tokenizers.pad([ids], self.config.data.max_len + 1)
    return {"image": self._pixels(record, rng, True), "tokens": tokens[0],
            "length": np.int32(length[0] - 1)}

  def _image_example(self, record: dict, rng: np.random.Generator | None,
                     train: bool = False) -> dict:
    """An image with its references as padded token ids `[refs, max_len]` (for SCST)."""
    k, max_len = self.config.data.captions_per_image, self.config.data.max_len
    refs = [self.tokenizer.encode(common.text(c)) for c in record["captions"][:k]]
    ids, lengths = tokenizers.pad(refs + [[]] * (k - len(refs)), max_len)
    return {"image": self._pixels(record, rng, train), "references": ids,
            "reference_lengths": lengths}

  # --- What the trainer needs. ---

  def init_params(self, rng: jax.Array):
    example = self._caption_example(self.splits["train"][0], None)
    image = self._image_input(jnp.asarray(example["image"])[None])
    tokens = jnp.asarray(example["tokens"])[None, :-1]
    params_rng, dropout_rng = jax.random.split(rng)
    return self.model.init({"params": params_rng, "dropout": dropout_rng}, image, tokens)

  def trainable(self, params):
    return common.trainable(params, self.config.model.frozen_encoder)

  def init_task_state(self):
    return {}

  def _encode(self, params, images, train: bool):
    """Image features; in training with BatchNorm, also the batch's statistics."""
    inputs = self._image_input(images)
    if train and "batch_stats" in params and not self.config.model.frozen_encoder:
      return self.model.apply(params, inputs, None, True, method="encode",
                              mutable=["batch_stats"])
    return self.model.apply(params, inputs, method="encode"), {}

  def _teacher_forced(self, params, features, inputs, rng, sample_prob):
    """Logits over `inputs`; with `sample_prob` > 0, scheduled sampling feeds the model's
    own previous choice instead of the true word with that probability."""
    deterministic = rng is None
    rngs = None if rng is None else {"dropout": rng}
    if not sample_prob:
      return self.model.apply(params, features, inputs, deterministic, method="teacher_forced",
                              rngs=rngs)
    state = self.model.apply(params, features, method="init_state")
    keys = jax.random.split(jax.random.fold_in(rng, 1), inputs.shape[1])

    def body(carry, xs):
      state, previous = carry
      truth, key, t = xs
      use_own = (jax.random.uniform(key, truth.shape) < sample_prob) & (t > 0)
      words = jnp.where(use_own, previous, truth)
      logits, state, aux = self.model.apply(params, state, words, deterministic, method="step",
                                            rngs={"dropout": jax.random.fold_in(rng, t)})
      return (state, jnp.argmax(logits, -1)), (logits, aux)

    (_, _), (logits, aux) = jax.lax.scan(
        body, (state, inputs[:, 0]), (inputs.T, keys, jnp.arange(inputs.shape[1])))
    return jnp.swapaxes(logits, 0, 1), jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), aux)

  def _sample_prob(self, step):
    ss = self.config.loss
    if not ss.scheduled_sampling_max:
      return 0.0
    grows = jnp.floor(jnp.maximum(step - ss.scheduled_sampling_start, 0)
                      / ss.scheduled_sampling_every) * ss.scheduled_sampling_increase
    return jnp.where(step >= ss.scheduled_sampling_start,
                     jnp.minimum(grows, ss.scheduled_sampling_max), 0.0)

  def loss_fn(self, params, task_state, batch, rng):
    if self.scst:
      return self._scst_loss(params, task_state, batch, rng)
    features, new_stats = self._encode(params, batch["image"], train=True)
    tokens = batch["tokens"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = jnp.arange(targets.shape[1])[None, :] < batch["length"][:, None]
    logits, aux = self._teacher_forced(params, features, inputs, rng,
                                       self._sample_prob(batch["step"][0]))
    nll_sum, count = losses.masked_cross_entropy(logits, targets, mask,
                                                 self.config.loss.label_smoothing)
    loss = nll_sum / count
    metrics = {"loss": (nll_sum, count)}
    weight = self.config.loss.doubly_stochastic
    if weight and "attention" in aux:
      # Xu et al. eq. 14, per caption: -log P(y | a) + lambda * sum_i (1 - sum_t alpha_ti)^2,
      # t over real words. Both terms are summed over the batch and divided by its number
      # of words, the normalisation of the NLL above, which keeps the paper's relative
      # weight (a per-caption penalty on a per-word NLL would weigh it ~T times more).
      coverage = jnp.sum(aux["attention"] * mask[..., None], axis=1)
      penalty = weight * jnp.sum(jnp.square(1.0 - coverage) * features.mask)
      loss = loss + penalty / count
      metrics["attention_reg"] = (penalty, count)
    return loss, (metrics, task_state, dict(new_stats))

  # --- Self-critical sequence training. ---

  @property
  def cider(self):
    """CIDEr-D with the document frequencies of the training references (token ids)."""
    if self._cider is None:
      from mmzoo.eval.caption_metrics import CiderD

      train = self.splits["train"]
      k = self.config.data.captions_per_image
      refs = [[tuple(self.tokenizer.encode(common.text(c))) for c in train[i]["captions"][:k]]
              for i in range(len(train))]
      self._cider = CiderD.from_corpus(refs)
    return self._cider

  def _rewards(self, samples, greedy, references, reference_lengths):
    """Host side: CIDEr-D of sampled and greedy captions against their references."""
    samples, greedy = np.asarray(samples), np.asarray(greedy)
    refs = [[tuple(r[:n]) for r, n in zip(rs, ns, strict=True) if n > 0]
            for rs, ns in zip(np.asarray(references), np.asarray(reference_lengths),
                              strict=True)]
    per = samples.shape[0] // len(refs)

    def words(seqs):
      return [tuple(int(t) for t in s if t not in (tokenizers.PAD_ID, tokenizers.EOS_ID))
              for s in seqs]

    sample_refs = [r for r in refs for _ in range(per)]
    reward = self.cider.score(words(samples), sample_refs)
    baseline = self.cider.score(words(greedy), refs)
    return reward.astype(np.float32), baseline.astype(np.float32)

  def _scst_loss(self, params, task_state, batch, rng):
    s = self.config.scst
    features, _ = self._encode(params, batch["image"], train=False)
    features = jax.lax.stop_gradient(features)
    batch_size = features.pooled.shape[0]
    step_fn = self._step_fn(params)
    state = self.model.apply(params, features, method="init_state")
    max_len = self.config.data.max_len
    greedy = decoding.greedy(step_fn, state, batch_size, max_len)
    tiled = jax.tree.map(lambda x: jnp.repeat(x, s.samples_per_image, axis=0), features)
    sampled = decoding.sample(step_fn, self.model.apply(params, tiled, method="init_state"),
                              rng, batch_size * s.samples_per_image, max_len,
                              temperature=s.temperature)
    sequences = jax.lax.stop_gradient(sampled.sequences)
    shapes = (jax.ShapeDtypeStruct((batch_size * s.samples_per_image,), jnp.float32),
              jax.ShapeDtypeStruct((batch_size,), jnp.float32))
    reward, baseline = jax.pure_callback(self._rewards, shapes, sequences, greedy.sequences,
                                         batch["references"], batch["reference_lengths"],
                                         vmap_method="sequential")
    advantage = reward - jnp.repeat(baseline, s.samples_per_image)
    # Differentiable log-probs of the sampled words (teacher forcing on the sample).
    inputs = jnp.concatenate([jnp.full((sequences.shape[0], 1), tokenizers.BOS_ID),
                              sequences[:, :-1]], axis=1)
    logits, _ = self.model.apply(params, tiled, inputs, True, method="teacher_forced")
    log_probs = jax.nn.log_softmax(logits)
    token_lp = jnp.take_along_axis(log_probs, sequences[..., None], axis=-1)[..., 0]
    mask = jnp.arange(max_len)[None, :] < sampled.lengths[:, None]
    count = jnp.sum(mask).astype(jnp.float32)
    loss = -jnp.sum(advantage[:, None] * token_lp * mask) / count
    n = jnp.asarray(reward.shape[0], jnp.float32)
    metrics = {"loss": (loss * count, count), "reward": (jnp.sum(reward), n),
               "greedy_reward": (jnp.sum(baseline), jnp.asarray(batch_size, jnp.float32))}
    return loss, (metrics, task_state)

  def train_batches(self):
    d = self.config.data
    parallel.check_batch_size(d.batch_size, "data.batch_size")
    per_process = d.batch_size // jax.process_count()
    if self.scst:
      return pipeline.train_batches(
          self.splits["train"], functools.partial(self._image_example, train=True),
          per_process, self.config.seed, read_threads=d.read_threads)
    pairs = pipeline.CaptionPairs(self.splits["train"], d.captions_per_image)
    return pipeline.Counted(pipeline.train_batches(pairs, self._caption_example, per_process,
                                                   self.config.seed, read_threads=d.read_threads))

  def evaluate(self, params, mesh, split: str = "validation") -> dict[str, float]:
    self._predictions_cache = None
    return registry.run(self.config.eval.evaluators, self, params, mesh, split)

  def artifacts(self) -> dict:
    return {"tokenizer": self.tokenizer.to_artifact()}

  def on_train_end(self, params) -> None:
    if jax.process_index() == 0 and self._predictions_cache is not None:
      _, references, predictions = self._predictions_cache
      for key in list(predictions)[:3]:
        print(f"{key}: {predictions[key]!r}  (reference: {references[key][0]!r})", flush=True)

  # --- Decoding and what the evaluators need. ---

  def _step_fn(self, params):
    def step(state, tokens):
      logits, state, aux = self.model.apply(params, state, tokens, method="step")
      return jax.nn.log_softmax(logits), state, aux

    return step

  def _decode_impl(self, params, images, batch_index=0, *, method: str):
    """`(sequences, aux)` of one batch; `batch_index` varies the sampling noise by batch."""
    e = self.config.eval
    features, _ = self._encode(params, images, train=False)
    state = self.model.apply(params, features, method="init_state")
    batch_size, max_len, step_fn = images.shape[0], self.config.data.max_len, self._step_fn(params)
    if method == "greedy":
      out = decoding.greedy(step_fn, state, batch_size, max_len)
      return out.sequences, out.aux
    if method == "sample":
      rng = jax.random.fold_in(jax.random.PRNGKey(e.get("seed", 0)), batch_index)
      out = decoding.sample(step_fn, state, rng, batch_size, max_len, e.temperature,
                            e.get("top_k", 0), e.get("top_p", 1.0))
      return out.sequences, out.aux
    if method == "beam":
      out = decoding.beam_search(step_fn, state, batch_size, e.beam_size, max_len,
                                 e.length_penalty)
    else:
      out = decoding.diverse_beam_search(step_fn, state, batch_size, e.beam_size, e.groups,
                                         e.diversity_strength, max_len, e.length_penalty)
    # Diverse beam search lists its hypotheses group by group: take the best of all.
    best = jnp.argmax(out.normalized_scores, axis=1)

    def pick(a):
      index = best.reshape((-1, 1) + (1,) * (a.ndim - 2))
      return jnp.take_along_axis(a, index, axis=1)[:, 0]

    return pick(out.sequences), jax.tree.map(pick, out.aux)

  def decode_method(self) -> str:
    e = self.config.eval
    if e.get("temperature", 0.0) > 0:
      return "sample"
    if e.beam_size <= 1:
      return "greedy"
    return "diverse" if e.get("groups", 1) > 1 else "beam"

  def split(self, split: str):
    if split not in self.splits:
      raise InputError(f"the captioning task has splits {sorted(self.splits)}, not {split!r}")
    source = self.splits[split]
    limit = self.config.eval.get("max_images", 0)
    if self.config.eval.get("subset", "all") == "relations":
      source = common.Subset(source, self._relation_images(split, source))
    return common.Subset(source, range(limit)) if limit and limit < len(source) else source

  def _relation_images(self, split: str, source) -> list[int]:
    """Shapes only: the images whose scenes hold at least one relation between objects."""
    from mmzoo.data import shapes

    if self.config.data.source != "shapes":
      raise InputError("eval.subset=relations needs the shapes world's scenes")
    return [i for i in range(len(source))
            if shapes.Scene.from_json(common.text(source[i]["scene"])).relations()]

  def caption_predictions(self, params, mesh, split: str = "validation"):
    """`(references {image_id: [captions]}, predictions {image_id: caption})` of a split."""
    if self._predictions_cache is not None and self._predictions_cache[0] == (id(params), split):
      return self._predictions_cache[1:]
    source = self.split(split)
    method = self.decode_method()
    transform = lambda record, rng: {"image": self._pixels(record, None, False)}  # noqa: E731
    batches = itertools.count()
    sequences = common.map_split(
        source, transform, self.config.eval.batch_size, mesh,
        lambda batch: self._decode(params, batch["image"], next(batches), method=method)[0])
    references, predictions = {}, {}
    for i, seq in enumerate(sequences):
      record = source[i]
      key = common.text(record["image_id"])
      references[key] = [common.text(c) for c in record["captions"]]
      predictions[key] = self.tokenizer.decode(seq)
    self._predictions_cache = ((id(params), split), references, predictions)
    return references, predictions

  def scenes(self, split: str) -> dict[str, str]:
    """Shapes only: each image's scene as JSON, by image id."""
    if self.config.data.source != "shapes":
      raise InputError("grounding metrics need the shapes world's scenes")
    source = self.split(split)
    return {common.text(source[i]["image_id"]): common.text(source[i]["scene"])
            for i in range(len(source))}

  def write_predictions(self, path: str) -> None:
    """The last evaluated predictions in COCO results format."""
    if self._predictions_cache is None:
      return
    _, _, predictions = self._predictions_cache
    results = [{"image_id": int(k) if k.isdigit() else k, "caption": v}
               for k, v in predictions.items()]
    with open(path, "w") as f:
      json.dump(results, f)
