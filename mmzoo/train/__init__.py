"""The generic trainer: loop, train state, checkpoints, parallelism, logging."""
