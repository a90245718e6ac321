r"""Image captioning: the settings Show and Tell, Show Attend and Tell and UpDown share.

`show_tell.py`, `show_attend_tell.py` and `updown.py` call `get_config` here
with their model; run them through `launch/captioning.py`. Variants,
comma-separated after the colon: `smoke` (tiny and short, for tests), `scst`
(self-critical training from a cross-entropy run: set --config.scst.init_from=W),
`rnn` (Show and Tell only: the lectures' vanilla RNN with the image in every step).
"""

import ml_collections

from mmzoo.configs import parse_variants

VARIANTS = ("default", "smoke", "scst", "rnn")


def get_config(arg: str | None, *, model: str) -> ml_collections.ConfigDict:
  variants = parse_variants(arg, VARIANTS, "default")
  config = ml_collections.ConfigDict()
  config.task = "captioning"  # Task module in mmzoo/tasks.
  config.seed = 0  # Seeds init, dropout, data order and sampling.

  config.data = ml_collections.ConfigDict()
  config.data.source = "shapes"  # "shapes", or "karpathy"/"coco" built by prepare_data.py.
  config.data.data_dir = ""  # Where datasets are built/found; "" is $MMZOO_DATA_DIR or ~/.cache.
  config.data.name = ""  # karpathy/coco: the built dataset's config name, e.g. "coco_256px".
  config.data.features_dir = ""  # Precomputed <image_id>.npy/.npz features instead of pixels.
  config.data.shapes_sizes = (20000, 1000, 1000)  # shapes: train/validation/test images.
  config.data.shapes_seed = 0  # shapes: the world's seed.
  config.data.image_size = 64  # shapes: rendered image size.
  config.data.build_workers = 0  # shapes: processes that build the dataset; 0 = all cores.
  config.data.captions_per_image = 5  # Training pairs (and SCST references) per image.
  config.data.max_len = 16  # Words per caption (plus eos); longer ones are truncated.
  config.data.tokenizer = "word"  # "word" (coco-caption normalisation) or "sentencepiece".
  config.data.min_count = 1  # word: keep words seen this often (5 for COCO).
  config.data.vocab_size = 1000  # sentencepiece: vocabulary size.
  config.data.batch_size = 64  # Global pairs (XE) or images (SCST) per step.
  config.data.crop_size = 0  # Random crop at train time, centre crop at eval; 0 = none.
  config.data.flip = False  # Random horizontal flips (off: captions name left and right).
  config.data.mean = (0.5, 0.5, 0.5)  # Per-channel normalisation of [0, 1] pixels.
  config.data.std = (0.25, 0.25, 0.25)
  # grain read threads per process. 1 is fastest on shapes (parsing holds the GIL);
  # JPEG datasets, whose decoding releases it, gain from more.
  config.data.read_threads = 1

  config.model = ml_collections.ConfigDict()
  config.model.name = model  # show_tell, show_tell_rnn, show_attend_tell or updown.
  config.model.embed_dim = 128  # Word embedding size.
  config.model.hidden_size = 256  # LSTM units.
  config.model.attention_dim = 128  # Attention models: size of the projected regions.
  config.model.gate = True  # Show Attend and Tell: the gating scalar beta.
  config.model.dropout_rate = 0.3  # On the decoder's inputs and outputs in training.
  config.model.encoder = "small_cnn"  # mmzoo.nn.vision encoder (resnet50, ...).
  config.model.cnn_features = (16, 32, 64, 128)  # small_cnn: channels per conv layer.
  config.model.cnn_strides = (2, 2, 2, 1)  # small_cnn: strides (64x64 -> 8x8 grid of 128).
  config.model.resnet_stages = 4  # resnet*: residual stages kept (3 gives conv4 features).
  config.model.frozen_encoder = False  # Keep the image encoder's weights fixed.

  config.loss = ml_collections.ConfigDict()
  config.loss.label_smoothing = 0.0  # Cross-entropy label smoothing.
  # Show Attend and Tell's doubly stochastic penalty, Xu et al.'s lambda (1 in the paper).
  # Off on shapes: it pulls every region's attention summed over the words towards 1, i.e.
  # with 64 regions and ~10 words spreads it over the empty background. With it at about
  # 10x the paper's weight (before the penalty was normalised per word), test grounding
  # precision was 0.61 (greedy); without it 0.89 after the same 3000 steps (RESULTS.md).
  config.loss.doubly_stochastic = 0.0
  config.loss.scheduled_sampling_start = 0  # Step at which scheduled sampling starts.
  config.loss.scheduled_sampling_every = 500  # Steps between increases of its probability.
  config.loss.scheduled_sampling_increase = 0.05  # Increase per `every` steps.
  config.loss.scheduled_sampling_max = 0.0  # Its highest probability; 0 disables it.

  config.scst = ml_collections.ConfigDict()
  config.scst.enabled = False  # Self-critical training instead of cross-entropy.
  config.scst.samples_per_image = 5  # Sampled captions per image, each against greedy.
  config.scst.temperature = 1.0  # Sampling temperature.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # "adam", "adamw", "rmsprop", "adagrad" or "sgd".
  config.optimizer.learning_rate = 1e-3  # Peak learning rate.
  config.optimizer.schedule = "cosine"  # "constant", "cosine" or "exponential".
  config.optimizer.warmup_steps = 100  # Linear warm-up steps.
  config.optimizer.decay_rate = 0.8  # exponential: factor per decay_steps.
  config.optimizer.decay_steps = 3000  # exponential: steps per decay.
  config.optimizer.weight_decay = 0.0  # adamw only.
  config.optimizer.clip_norm = 2.0  # Global-norm gradient clipping.
  config.optimizer.clip_value = 0.0  # Per-entry clipping; 0 disables.
  config.optimizer.eps = 1e-8  # Adam's epsilon.

  config.train = ml_collections.ConfigDict()
  # Optimizer steps (Show Attend and Tell: 5000, about 13 minutes on a quiet 2-core CPU).
  config.train.num_steps = 5000 if model == "show_attend_tell" else 3000
  config.train.log_every = 100  # Log train metrics every this many steps.
  config.train.eval_every = 1000  # Validate every this many steps (and at the end).
  config.train.checkpoint_every = 500  # Save every this many steps (and at the end).
  config.train.keep_checkpoints = 2  # Latest checkpoints kept (plus the best).
  config.train.best_metric = "CIDEr"  # Validation metric that picks the best checkpoint.
  config.train.best_mode = "max"
  config.train.init_from = ""  # A workdir whose best params start this run (SCST).

  config.eval = ml_collections.ConfigDict()
  config.eval.evaluators = ("captions", "grounding")  # Evaluators from mmzoo.eval.registry.
  config.eval.batch_size = 200  # Images decoded at once.
  config.eval.beam_size = 3  # 1 decodes greedily.
  # Beam ranking: "none" (total log-prob), "average" (per word) or "gnmt". On shapes "none"
  # prefers short generic captions, which CIDEr-D's length penalty punishes (Show Attend
  # and Tell, test, beam 3: CIDEr-D 1.306 with "none", 1.484 with "average"; greedy 1.324).
  config.eval.length_penalty = "average"
  # > 0: sample captions at this temperature (with top_k / top_p, from seed) instead of
  # searching; one caption per image, as SCST draws them.
  config.eval.temperature = 0.0
  config.eval.top_k = 0  # Sampling: keep the k likeliest words; 0 = all.
  config.eval.top_p = 1.0  # Sampling: nucleus mass; 1 = all.
  config.eval.seed = 0  # Sampling: the noise's seed.
  config.eval.groups = 1  # Diverse beam search groups (beam_size must divide by it).
  config.eval.diversity_strength = 0.5  # Diverse beam search: Hamming penalty lambda.
  config.eval.max_images = 1000  # Images per evaluated split; 0 = all.
  config.eval.subset = "all"  # "all", or shapes "relations": images whose scenes hold relations.

  if "rnn" in variants:
    if model != "show_tell":
      raise ValueError("the rnn variant is Show and Tell's")
    config.model.name = "show_tell_rnn"
  if "scst" in variants:
    config.scst.enabled = True
    config.data.batch_size = 32
    config.optimizer.learning_rate = 5e-5
    config.optimizer.warmup_steps = 0
    config.optimizer.schedule = "constant"
    config.train.num_steps = 1000
    config.train.eval_every = 250
  if "smoke" in variants:
    config.data.shapes_sizes = (96, 32, 32)
    config.data.batch_size = 16
    config.data.max_len = 10
    config.model.embed_dim = 16
    config.model.hidden_size = 16
    config.model.attention_dim = 8
    config.model.cnn_features = (8, 16)
    config.model.cnn_strides = (4, 2)
    config.optimizer.warmup_steps = 2
    config.scst.samples_per_image = 2
    config.train.num_steps = 8
    config.train.log_every = 4
    config.train.eval_every = 4
    config.train.checkpoint_every = 4
    config.eval.batch_size = 16
    config.eval.max_images = 0
  return config
