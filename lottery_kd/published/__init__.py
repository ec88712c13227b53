"""Published numbers carried with the package, so a report compares with them anywhere.

    renda2020_cifar10_imagenet.json   Renda, Frankle and Carbin 2020: dense and IMP accuracies of
                                      the CIFAR-10 ResNets and ImageNet ResNet-50 (their released
                                      result tables), and the KD-ticket release's recipe
    rigl2020_cifar10_wrn22_2.json     Evci et al. 2020: WRN-22-2 on CIFAR-10 with ERK densities
                                      (RigL, static, pruning), as the first author posted them

Each file names its source; `load(name)` returns one as a dict.
"""

from __future__ import annotations

import json
from importlib import resources

TABLES = ("renda2020_cifar10_imagenet", "rigl2020_cifar10_wrn22_2")


def load(name: str) -> dict:
    """The published table `name` (one of TABLES) as a dict."""
    if name not in TABLES:
        raise ValueError(f"unknown published table {name!r}; allowed: {', '.join(TABLES)}")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())


# Published densities are rounded to three significant figures (0.107 for 0.8^10, at most 0.35 %
# off); successive IMP levels lie 20 % or more apart, so 2 % tells them apart at any depth, where
# a fixed 0.005 joins level 18 (0.0180) to level 17's 0.0225.
DENSITY_TOLERANCE = 0.02


def same_density(published: float, density: float) -> bool:
    """Whether a published density is the run's `density` (within DENSITY_TOLERANCE of it)."""
    return abs(published - density) <= DENSITY_TOLERANCE * density
