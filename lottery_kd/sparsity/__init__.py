"""Sparsity: mask pytrees, masking functions and their registry, criteria, layer-wise
distributions, dynamic sparse training and sparse-aware initialisation."""
