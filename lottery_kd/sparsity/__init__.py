"""Sparsity: mask pytrees, masking functions and their registry, criteria, layer-wise
distributions, dynamic sparse training, gradual magnitude pruning and sparse-aware
initialisation."""
