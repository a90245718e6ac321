r"""Character-level language model (Karpathy's char-rnn), trained with TBPTT.

Train the default 2-layer LSTM on the built-in corpus (the Python standard
library's own source, read at run time):

  python launch/char_rnn.py --config=mmzoo/configs/char_rnn.py --workdir=workdirs/char_rnn

Variants, comma-separated after the colon: `lstm` (default), `gru`, `rnn`, and
`smoke` (tiny and short, for tests), e.g. `--config=mmzoo/configs/char_rnn.py:gru,smoke`.
Any field can be overridden: `--config.model.hidden_size=512 --config.data.path=input.txt`.
"""

import ml_collections

from mmzoo.configs import parse_variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = parse_variants(arg, ("lstm", "gru", "rnn", "smoke"), "lstm")
  cell = next((v for v in variants if v in ("lstm", "gru", "rnn")), "lstm")

  config = ml_collections.ConfigDict()
  config.task = "char_lm"  # Task module in mmzoo/tasks.
  config.seed = 0  # Seeds parameter init, dropout and sampling.

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # A UTF-8 text file; empty means the built-in corpus.
  config.data.max_chars = 3_000_000  # Characters of the built-in corpus to read.
  config.data.validation_fraction = 0.05  # The last fraction of the text is validation.
  config.data.batch_size = 32  # Global number of parallel streams (TBPTT batch).
  config.data.seq_len = 100  # Characters per TBPTT chunk.

  config.model = ml_collections.ConfigDict()
  config.model.cell = cell  # "lstm", "gru" or "rnn" (tanh).
  config.model.hidden_size = 256  # Units per recurrent layer.
  config.model.num_layers = 2  # Stacked recurrent layers.
  config.model.embed_dim = 64  # Character embedding size; 0 feeds one-hot vectors.
  config.model.dropout_rate = 0.0  # Dropout between layers and before the softmax.
  config.model.init_scheme = "torch"  # "torch": U(+-1/sqrt(H)); "normal": N(0, init_std^2), 0 bias.
  config.model.init_std = 0.01  # Standard deviation for init_scheme="normal".
  config.model.unroll = 1  # lax.scan unroll factor (speed only).

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # "adam", "adamw", "rmsprop", "adagrad" or "sgd".
  config.optimizer.learning_rate = 2e-3  # Peak learning rate.
  config.optimizer.schedule = "cosine"  # "constant", "cosine" (to 0 at num_steps) or "exponential".
  config.optimizer.warmup_steps = 50  # Linear warm-up steps.
  config.optimizer.decay_rate = 0.97  # Per decay_steps, for schedule="exponential".
  config.optimizer.decay_steps = 1000  # For schedule="exponential".
  config.optimizer.weight_decay = 0.0  # For adamw.
  config.optimizer.clip_norm = 5.0  # Clip gradients to this global norm; 0 disables.
  config.optimizer.clip_value = 0.0  # Clip each gradient entry to [-v, v]; 0 disables.
  config.optimizer.initial_accumulator = 0.1  # Adagrad's initial accumulator.
  config.optimizer.eps = 1e-8  # Epsilon of adam/rmsprop/adagrad.

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 2400  # Optimizer steps (one TBPTT chunk per stream each).
  config.train.loss_normalization = "token"  # "token": mean per char; "sequence": sum over a chunk.
  config.train.log_every = 100  # Log train metrics every this many steps.
  config.train.eval_every = 300  # Validate every this many steps (and at the end).
  config.train.checkpoint_every = 300  # Save every this many steps (and at the end).
  config.train.keep_checkpoints = 3  # Latest checkpoints kept.

  config.eval = ml_collections.ConfigDict()
  config.eval.evaluators = ("lm",)  # Evaluators from mmzoo.eval.registry.
  config.eval.batch_size = 32  # Validation streams.
  config.eval.max_chars = 100_000  # Validation characters scored; 0 means all.

  config.sample = ml_collections.ConfigDict()
  config.sample.prime = "def "  # Priming text for samples printed at the end of training.
  config.sample.length = 300  # Characters sampled.
  config.sample.temperature = 0.8  # Softmax temperature.
  config.sample.top_k = 0  # Keep the k most likely characters; 0 keeps all.

  if "smoke" in variants:
    config.data.max_chars = 40_000
    config.data.batch_size = 8
    config.data.seq_len = 16
    config.model.hidden_size = 32
    config.model.num_layers = 2
    config.model.embed_dim = 16
    config.optimizer.warmup_steps = 2
    config.train.num_steps = 20
    config.train.log_every = 5
    config.train.eval_every = 10
    config.train.checkpoint_every = 10
    config.eval.batch_size = 8
    config.eval.max_chars = 2_000
    config.sample.length = 40
  return config
