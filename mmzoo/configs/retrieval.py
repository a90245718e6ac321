r"""Joint image-text embeddings for retrieval: the settings VSE, VSE++ and order share.

`vse.py`, `vsepp.py` and `order.py` call `get_config` here with their loss; run
them through `launch/retrieval.py`. Variants, comma-separated after the colon:
`smoke` (tiny and short, for tests), `bow` (bag-of-words sentence encoder),
`mean` (mean-pooled GRU states instead of the last state), `precomp` (vsepp's
precomputed features; set --config.data.precomp_dir).
"""

import ml_collections

from mmzoo.configs import parse_variants

VARIANTS = ("default", "smoke", "bow", "mean", "precomp")


def get_config(arg: str | None, *, max_violation: bool, space: str) -> ml_collections.ConfigDict:
  variants = parse_variants(arg, VARIANTS, "default")
  config = ml_collections.ConfigDict()
  config.task = "retrieval"  # Task module in mmzoo/tasks.
  config.seed = 0  # Seeds init and data order.

  config.data = ml_collections.ConfigDict()
  config.data.source = "shapes"  # "shapes", "karpathy", "coco" (prepare_data.py) or "precomp".
  config.data.data_dir = ""  # Where datasets are built/found; "" is $MMZOO_DATA_DIR or ~/.cache.
  config.data.name = ""  # karpathy/coco: the built dataset's config name, e.g. "coco_256px".
  config.data.precomp_dir = ""  # precomp: the directory of {split}_ims.npy + {split}_caps.txt.
  config.data.precomp_splits = ml_collections.ConfigDict(
      {"train": "train", "validation": "dev", "test": "test"})  # precomp: our split -> file stem.
  config.data.shapes_sizes = (20000, 1000, 1000)  # shapes: train/validation/test images.
  config.data.shapes_seed = 0  # shapes: the world's seed.
  config.data.image_size = 64  # shapes: rendered image size.
  config.data.captions_per_image = 5  # k: pairs per image in training and evaluation.
  config.data.max_len = 24  # Caption tokens kept (with eos); longer ones are truncated.
  config.data.tokenizer = "word"  # "word" (coco-caption normalisation) or "sentencepiece".
  config.data.min_count = 1  # word: keep words seen this often in training captions.
  config.data.vocab_size = 1000  # sentencepiece: vocabulary size.
  config.data.batch_size = 128  # Global (image, caption) pairs per step.
  config.data.crop_size = 0  # Random crop at train time, centre crop at eval; 0 = none.
  config.data.flip = False  # Random horizontal flips (off: captions name left and right).
  config.data.mean = (0.5, 0.5, 0.5)  # Per-channel normalisation of [0, 1] pixels.
  config.data.std = (0.25, 0.25, 0.25)
  # grain read threads per process. 1 is fastest on shapes (parsing holds the GIL);
  # JPEG datasets, whose decoding releases it, gain from more.
  config.data.read_threads = 1
  config.data.build_workers = 0  # shapes: processes that build the dataset; 0 = all cores.

  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 256  # Joint space size (1024 in VSE++ on COCO).
  config.model.encoder = "small_cnn"  # mmzoo.nn.vision encoder name (resnet50, ...).
  config.model.cnn_features = (16, 32, 64, 128)  # small_cnn: channels per conv layer.
  config.model.cnn_strides = (2, 2, 2, 2)  # small_cnn: strides (64x64 -> 4x4x128).
  config.model.resnet_stages = 4  # resnet*: residual stages kept (3 gives conv4 features).
  config.model.frozen_encoder = False  # Keep the image encoder's weights fixed.
  config.model.text_kind = "gru"  # Sentence encoder: "gru", "lstm" or "bow".
  config.model.word_dim = 128  # Word embedding size (300 in VSE++).
  config.model.text_hidden = 256  # Recurrent units (1024 in VSE++).
  config.model.text_pooling = "last"  # "last" state or "mean" over time.
  config.model.space = space  # "cosine": L2-normalised; "order": absolute value, order score.

  config.loss = ml_collections.ConfigDict()
  config.loss.kind = "hinge"  # "hinge" ranking loss or "softmax" (in-batch InfoNCE).
  config.loss.margin = 0.05 if space == "order" else 0.2  # Hinge margin alpha.
  config.loss.max_violation = max_violation  # Hardest negative only (VSE++), else sum.
  # VSE++ from random init: the sum over negatives for this many steps first (0 = never).
  config.loss.max_violation_warmup = 2000 if max_violation else 0
  # shapes: a caption true of another image of the batch is no negative of it (the world
  # repeats descriptions, so "the box is red" fits many images; a hardest negative that
  # is in fact a match makes VSE++ collapse).
  config.loss.semantic_negatives = True
  config.loss.temperature = 0.07  # softmax: logit temperature.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # As VSE++.
  config.optimizer.learning_rate = 5e-4  # Peak learning rate.
  config.optimizer.schedule = "cosine"  # "constant", "cosine" or "exponential".
  config.optimizer.warmup_steps = 100  # Linear warm-up steps.
  config.optimizer.decay_rate = 0.1  # exponential: factor per decay_steps.
  config.optimizer.decay_steps = 15000  # exponential: steps per decay.
  # x drop_factor from drop_step on (0 = no drop). VSE++ here drops tenfold when it switches
  # to hardest negatives (drop_step is set to loss.max_violation_warmup below): at the full
  # rate they pull the space into one cone (mean cosine between captions 0.08 -> 0.97 in
  # 200 steps at 2e-4).
  config.optimizer.drop_factor = 0.1
  config.optimizer.weight_decay = 0.0  # adamw only.
  config.optimizer.clip_norm = 2.0  # Global-norm gradient clipping (VSE++'s grad_clip).
  config.optimizer.clip_value = 0.0  # Per-entry clipping; 0 disables.
  config.optimizer.eps = 1e-8  # Adam's epsilon.

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 3000  # Optimizer steps.
  config.train.log_every = 100  # Log train metrics every this many steps.
  config.train.eval_every = 500  # Validate every this many steps (and at the end).
  config.train.checkpoint_every = 500  # Save every this many steps (and at the end).
  config.train.keep_checkpoints = 2  # Latest checkpoints kept (plus the best).
  config.train.best_metric = "rsum"  # Validation metric that picks the best checkpoint.
  config.train.best_mode = "max"

  config.eval = ml_collections.ConfigDict()
  config.eval.evaluators = ("retrieval",)  # Evaluators from mmzoo.eval.registry.
  config.eval.batch_size = 256  # Embedding batch.
  config.eval.max_images = 1000  # Images per evaluated split (the Flickr/COCO-1k size); 0 = all.

  if "bow" in variants:
    config.model.text_kind = "bow"
  if "mean" in variants:
    config.model.text_pooling = "mean"
  if "precomp" in variants:
    config.data.source = "precomp"
    config.model.embed_dim = 1024
    config.model.word_dim = 300
    config.model.text_hidden = 1024
    config.data.batch_size = 128
    config.data.min_count = 4
    config.optimizer.learning_rate = 2e-4
    config.loss.max_violation_warmup = 0  # Pretrained features: as VSE++ trains.
  if "smoke" in variants:
    config.data.shapes_sizes = (96, 32, 32)
    config.data.batch_size = 16
    config.data.max_len = 12
    config.model.embed_dim = 16
    config.model.cnn_features = (8, 16)
    config.model.cnn_strides = (4, 2)
    config.model.word_dim = 8
    config.model.text_hidden = 16
    config.optimizer.warmup_steps = 2
    config.loss.max_violation_warmup = 4 if max_violation else 0
    config.train.num_steps = 12
    config.train.log_every = 4
    config.train.eval_every = 6
    config.train.checkpoint_every = 6
    config.eval.batch_size = 16
    config.eval.max_images = 0
  config.optimizer.drop_step = config.loss.max_violation_warmup
  return config
