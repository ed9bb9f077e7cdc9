"""Paired statistics for comparing two samplers on the same prompts and noise (``bench/quality.py``'s verdict).

Pure numpy (no torch, no WebUI):

* ``paired_bootstrap``: the difference ``b - a`` of two ratio estimates over the same units (scenes), with a
  percentile interval from resampling the units (a scene's objects stay together: a cluster bootstrap).
* ``mcnemar_exact``: the two-sided exact McNemar p-value from the discordant pairs of a binary outcome.
* ``frechet_distance``: the Fréchet distance between two Gaussians (FID's formula), and ``frechet_of`` the one
  between two sets of feature vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    a: float  # the estimate under the first sampler (sum of numerators / sum of denominators)
    b: float
    diff: float  # b - a
    low: float  # percentile bootstrap interval of diff
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(a: Sequence[float], b: Sequence[float], denominators: Sequence[float] | None = None,
                     draws: int = 2000, level: float = 0.95, seed: int = 0) -> Difference:
    """``sum(b) / sum(d) - sum(a) / sum(d)`` over the units (``d`` = ``denominators``, default 1 per unit: the
    means) and its ``level`` percentile interval from ``draws`` resamplings of the units, the same units for
    ``a`` and ``b`` in each draw (paired). Per-object rates: ``a``/``b`` the count right per scene and ``d``
    the scene's object count."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.ones_like(a) if denominators is None else np.asarray(denominators, np.float64)
    if not a.shape == b.shape == d.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a, b and denominators must be equal-length 1-D sequences, got {a.shape}, {b.shape}, "
                         f"{d.shape}")
    if d.sum() <= 0:
        raise ValueError("the denominators must sum to more than 0")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(draws, len(a)))
    diffs = (b[idx] - a[idx]).sum(1) / np.maximum(d[idx].sum(1), 1e-300)
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    ea, eb = a.sum() / d.sum(), b.sum() / d.sum()
    return Difference(float(ea), float(eb), float(eb - ea), float(low), float(high))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under no difference, each of the ``only_a + only_b`` discordant pairs
    falls on either side with probability 1/2 (a binomial test); 1 when there are none."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` for covariance matrices (PSD, possibly singular):
    the trace of ``(C1 C2)^(1/2)`` is taken as that of ``(C1^(1/2) C2 C1^(1/2))^(1/2)``, which is symmetric."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    root = _sqrt_psd(cov1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov2 @ root), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def frechet_of(x: np.ndarray, y: np.ndarray) -> float:
    """The Fréchet distance between the Gaussians fitted to the rows of ``x`` and of ``y`` (``(n, features)``)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def paired_frechet(x: np.ndarray, y: np.ndarray, reference: np.ndarray, draws: int = 500, level: float = 0.95,
                   seed: int = 0) -> Difference:
    """Fréchet distances of ``x`` and ``y`` (features of the same units' images under two samplers) to a fixed
    ``reference`` set, and the interval of ``FD(y) - FD(x)`` from resampling the units (paired)."""
    rng = np.random.default_rng(seed)
    ref_mu, ref_cov = reference.mean(0), np.cov(reference, rowvar=False)

    def fd(z):
        return frechet_distance(z.mean(0), np.cov(z, rowvar=False), ref_mu, ref_cov)

    diffs = []
    for _ in range(draws):
        idx = rng.integers(0, len(x), size=len(x))
        diffs.append(fd(y[idx]) - fd(x[idx]))
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    a, b = fd(x), fd(y)
    return Difference(a, b, b - a, float(low), float(high))
