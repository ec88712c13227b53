"""Lottery-ticket pruning with knowledge distillation, in JAX."""
