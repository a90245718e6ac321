r"""min-char-rnn: the lecture gist's vanilla RNN character model.

Settings as in Karpathy's gist: one tanh RNN layer of 100 units over one-hot
characters, 25-step TBPTT chunks of a single stream, the loss summed over the
chunk, Adagrad with learning rate 0.1, every gradient entry clipped to [-5, 5],
weights N(0, 0.01^2) and zero biases.

  python launch/char_rnn.py --config=mmzoo/configs/min_char_rnn.py --workdir=workdirs/min_char_rnn
"""

import ml_collections

from mmzoo.configs import char_rnn, parse_variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = parse_variants(arg, ("default", "smoke"), "default")
  config = char_rnn.get_config("rnn,smoke" if "smoke" in variants else "rnn")
  config.data.batch_size = 1  # The gist reads one stream.
  config.data.seq_len = 25  # seq_length = 25.
  config.model.hidden_size = 100  # hidden_size = 100.
  config.model.num_layers = 1
  config.model.embed_dim = 0  # One-hot inputs.
  config.model.dropout_rate = 0.0
  config.model.init_scheme = "normal"  # randn * 0.01 weights, zero biases.
  config.model.init_std = 0.01
  config.optimizer.name = "adagrad"
  config.optimizer.learning_rate = 0.1
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 0
  config.optimizer.clip_norm = 0.0
  config.optimizer.clip_value = 5.0  # np.clip(dparam, -5, 5).
  config.optimizer.initial_accumulator = 0.0  # mem starts at zero...
  config.optimizer.eps = 1e-8  # ...and the update divides by sqrt(mem + 1e-8).
  config.train.loss_normalization = "sequence"  # The gist sums the loss over the chunk.
  config.eval.batch_size = 1
  if "smoke" not in variants:
    config.train.num_steps = 20_000
    config.train.log_every = 1000
    config.train.eval_every = 5000
    config.train.checkpoint_every = 5000
    config.eval.max_chars = 20_000
  else:
    config.train.num_steps = 20
  return config
