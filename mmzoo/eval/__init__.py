"""Evaluation: metrics, the evaluator registry, and evaluation from a workdir."""
