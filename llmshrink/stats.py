"""Uncertainty of evaluation metrics: percentile bootstrap over items, alone and paired between two checkpoints.

An item is what a metric averages over: a question, a multiple-choice item, or a perplexity window (the
perplexity of a resample is exp(sum of NLL / sum of predicted tokens) over its windows). Paired comparisons
resample the same items for both checkpoints, so the shared difficulty of an item cancels out.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 2000


def _indices(n: int, seed: int, resamples: int) -> np.ndarray:
    if n < 1:
        raise ValueError("a confidence interval needs at least one item")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(stats: np.ndarray, level: float) -> list[float]:
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def mean_ci(values: Sequence[float], level: float = 0.95, seed: int = 0, resamples: int = RESAMPLES) -> list[float]:
    """Percentile bootstrap interval of the mean of per-item values (e.g. 0/1 correctness)."""
    v = np.asarray(values, dtype=np.float64)
    return _interval(v[_indices(len(v), seed, resamples)].mean(axis=1), level)


def ppl(nll: Sequence[float], tokens: Sequence[int]) -> float:
    """Perplexity of windows with summed NLL `nll` over `tokens` predicted tokens each."""
    return float(np.exp(np.sum(nll) / np.sum(tokens)))


def ppl_ci(nll: Sequence[float], tokens: Sequence[int], level: float = 0.95, seed: int = 0,
           resamples: int = RESAMPLES) -> list[float]:
    """Percentile bootstrap interval of the perplexity, resampling windows."""
    return [float(np.exp(x)) for x in ratio_ci(nll, tokens, level, seed, resamples)]


def ratio_ci(sums: Sequence[float], counts: Sequence[float], level: float = 0.95, seed: int = 0,
             resamples: int = RESAMPLES) -> list[float]:
    """Percentile bootstrap interval of sum(sums) / sum(counts) (e.g. a per-token mean over windows), resampling
    windows."""
    s, c = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    idx = _indices(len(s), seed, resamples)
    return _interval(s[idx].sum(axis=1) / c[idx].sum(axis=1), level)


def paired_mean_diff(a: Sequence[float], b: Sequence[float], level: float = 0.95, seed: int = 0,
                     resamples: int = RESAMPLES) -> tuple[float, list[float]]:
    """mean(a) - mean(b) over the same items, and its paired bootstrap interval."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape:
        raise ValueError(f"paired items differ in number: {len(a_)} and {len(b_)}")
    d = a_ - b_
    return float(d.mean()), _interval(d[_indices(len(d), seed, resamples)].mean(axis=1), level)


def paired_ppl_diff(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int], level: float = 0.95,
                    seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, list[float]]:
    """ppl(a) - ppl(b) on the same windows (same `tokens`), and its paired bootstrap interval."""
    a, b, t = (np.asarray(x, dtype=np.float64) for x in (nll_a, nll_b, tokens))
    if not a.shape == b.shape == t.shape:
        raise ValueError(f"paired windows differ in number: {len(a)}, {len(b)}, {len(t)}")
    idx = _indices(len(t), seed, resamples)
    diffs = np.exp(a[idx].sum(axis=1) / t[idx].sum(axis=1)) - np.exp(b[idx].sum(axis=1) / t[idx].sum(axis=1))
    return ppl(a, t) - ppl(b, t), _interval(diffs, level)


def significant(interval: Sequence[float]) -> bool:
    """Whether an interval of a difference excludes 0."""
    return interval[0] > 0 or interval[1] < 0
