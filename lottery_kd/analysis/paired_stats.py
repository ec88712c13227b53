"""The statistics of lottery_kd.paired, pure functions of counts: the exact McNemar test, Tango's
score interval for the difference of two paired accuracies, the exact (Clopper-Pearson)
interval that goes with the test, the normal interval for paired proportions, and Holm's
step-down adjustment. Exact integer or log-space arithmetic where it matters, so ImageNet-sized
counts stay quick; no SciPy (tests check the values against it)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def mcnemar_p(a_only: int, b_only: int) -> float:
    """The exact two-sided McNemar p-value: twice the binomial(a_only + b_only, 1/2) probability
    of the smaller count or fewer, at most 1 (exact integer arithmetic; the binomial
    coefficients by their running recurrence, so ImageNet-sized counts stay quick). A p below
    the float range (about 1e-308) comes back as 0.0."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    term, tail = 1, 1  # C(discordant, 0)
    for k in range(min(a_only, b_only)):
        term = term * (discordant - k) // (k + 1)  # C(discordant, k + 1), exact
        tail += term
    return min(1.0, 2 * tail / 2 ** discordant)


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 1 - alpha interval of a binomial proportion: the probabilities
    at which `successes` or more, and `successes` or fewer, have probability alpha / 2 each
    (bisection on the exact tails in log space, to 1e-12 of the bound: relative, so tiny bounds
    keep their digits)."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"clopper_pearson needs 0 <= successes <= trials, trials > 0; got "
                         f"{successes} of {trials}")
    k = np.arange(trials + 1)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(trials - k[:-1]) - np.log(k[1:]))])

    def at_least(first: int, prob: float) -> float:  # P(X >= first), X ~ binomial(trials, prob)
        log_pmf = log_choose[first:] + k[first:] * math.log(prob) \
            + (trials - k[first:]) * math.log1p(-prob)
        return float(np.exp(np.logaddexp.reduce(log_pmf)))

    def solve(first: int, target: float) -> float:  # P(X >= first) = target; it grows with prob
        low, high = 0.0, 1.0
        for _ in range(2000):  # 1e-12 relative at bounds down to about 1e-290
            if high - low <= 1e-12 * high:
                break
            middle = (low + high) / 2
            low, high = (low, middle) if at_least(first, middle) > target else (middle, high)
        return (low + high) / 2

    lower = 0.0 if successes == 0 else solve(successes, alpha / 2)  # P(X >= k) = alpha / 2
    upper = 1.0 if successes == trials else solve(successes + 1, 1 - alpha / 2)  # P(X <= k) too
    return lower, upper


def tango_score(a_only: int, b_only: int, n: int, difference: float) -> float:
    """Tango's (1998) score statistic for the hypothesis that the accuracy difference is
    `difference`: the observed (a_only - b_only) / n minus it, over its standard error with the
    share of images only b gets right at its maximum-likelihood value under that hypothesis (the
    larger root of 2n q^2 + (-a - b + (2n - a + b) d) q - b d (1 - d) = 0). It falls as
    `difference` grows; +-inf where that standard error is 0."""
    quadratic = -a_only - b_only + (2 * n - a_only + b_only) * difference
    constant = -b_only * difference * (1 - difference)
    root = math.sqrt(max(quadratic * quadratic - 8 * n * constant, 0.0))
    b_share = max((root - quadratic) / (4 * n), 0.0)
    excess = a_only - b_only - n * difference
    variance = n * (2 * b_share + difference * (1 - difference))
    if variance <= 0:
        return 0.0 if excess == 0 else math.copysign(math.inf, excess)
    return excess / math.sqrt(variance)


def tango_interval(a_only: int, b_only: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Tango's score interval for the difference of two accuracies on the same n images, a_only
    and b_only the images only one gets right: the differences whose score statistic lies
    within +-z (bisection, to 1e-12). Unlike the exact interval given the discordant count (which
    can cover well under 95 % where one ticket wins most of the discordant images), its coverage
    stays near nominal (Tango 1998; Fagerland, Lydersen and Laake 2014 compare the paired
    methods)."""
    if n <= 0 or a_only < 0 or b_only < 0 or a_only + b_only > n:
        raise ValueError(f"tango_interval needs 0 <= a_only + b_only <= n, n > 0; got "
                         f"{a_only}, {b_only} of {n}")
    estimate = (a_only - b_only) / n

    def solve(low: float, high: float, target: float) -> float:  # score(d) = target on [low, high]
        while high - low > 1e-12:
            middle = (low + high) / 2
            low, high = ((middle, high) if tango_score(a_only, b_only, n, middle) > target
                         else (low, middle))
        return (low + high) / 2

    lower = -1.0 if tango_score(a_only, b_only, n, -1.0) <= z else solve(-1.0, estimate, z)
    upper = 1.0 if tango_score(a_only, b_only, n, 1.0) >= -z else solve(estimate, 1.0, -z)
    return lower, upper


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order): the i-th smallest times the number of
    tests not smaller, never below an earlier one's, at most 1; an adjusted p < 0.05 keeps the
    test's finding with at most a 0.05 chance of any false finding among all of them."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_test(a_right: np.ndarray, b_right: np.ndarray) -> dict:
    """The paired comparison of two tickets from which images each classifies right (same
    images, same order): counts, the difference of accuracies with its 95 % interval (Tango's
    score interval; also the exact one given the discordant count, which excludes zero exactly
    when p < 0.05, and the normal one), and the exact McNemar p-value."""
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    if a_right.shape != b_right.shape or a_right.ndim != 1 or not len(a_right):
        raise ValueError(f"paired_test needs two equal-length vectors, got {a_right.shape} and "
                         f"{b_right.shape}")
    n = len(a_right)
    a_only = int(np.sum(a_right & ~b_right))
    b_only = int(np.sum(~a_right & b_right))
    discordant = a_only + b_only
    difference = (a_only - b_only) / n
    half_width = Z95 * math.sqrt(max(discordant - (a_only - b_only) ** 2 / n, 0.0)) / n
    share = clopper_pearson(a_only, discordant) if discordant else (0.5, 0.5)
    return {"n": n, "a_only": a_only, "b_only": b_only, "difference": difference,
            "ci95": list(tango_interval(a_only, b_only, n)),
            "ci95_given_discordant": [(2 * bound - 1) * discordant / n for bound in share],
            "ci95_normal": [difference - half_width, difference + half_width],
            "p_value": mcnemar_p(a_only, b_only)}
