"""scikit-learn's bundled 8x8 handwritten digits in fixed train/val/test splits (no download)."""

from __future__ import annotations

import numpy as np

NUM_TEST = 360
NUM_VALIDATION = 180
SPLIT_SEED = 0  # fixed so the split never depends on the run seed


def digits_split_indices(num_examples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) index arrays: a fixed permutation, test first, then val, then train."""
    order = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
    test = order[:NUM_TEST]
    val = order[NUM_TEST:NUM_TEST + NUM_VALIDATION]
    train = order[NUM_TEST + NUM_VALIDATION:]
    return train, val, test


def load_digits_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                  np.ndarray, np.ndarray, np.ndarray]:
    """Load the digits as uint8 [N, 8, 8, 1] (values 0..16, not rescaled) and int32 labels.

    Returns (train_x, train_y, val_x, val_y, test_x, test_y) with 1257 / 180 / 360 examples.
    """
    from sklearn.datasets import load_digits  # imported here: only digits runs need scikit-learn

    bunch = load_digits()
    images = np.asarray(bunch.images).astype(np.uint8)[..., np.newaxis]
    labels = np.asarray(bunch.target).astype(np.int32)
    train, val, test = digits_split_indices(len(labels))
    return images[train], labels[train], images[val], labels[val], images[test], labels[test]
