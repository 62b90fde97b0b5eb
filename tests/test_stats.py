"""Bootstrap intervals against known cases, and paired differences on synthetic per-item data."""
from __future__ import annotations

import math

import numpy as np
import pytest

from llmshrink import stats


def test_mean_interval_matches_the_normal_approximation_for_a_large_sample() -> None:
    values = [1] * 600 + [0] * 400  # p = 0.6, n = 1000: standard error sqrt(p(1-p)/n) = 0.0155
    lo, hi = stats.mean_ci(values)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 1000)
    assert lo == pytest.approx(0.6 - half, abs=0.006) and hi == pytest.approx(0.6 + half, abs=0.006)


def test_interval_of_a_constant_is_a_point_and_seeded() -> None:
    assert stats.mean_ci([1, 1, 1, 1]) == [1.0, 1.0]
    values = np.random.default_rng(1).random(50).tolist()
    assert stats.mean_ci(values, seed=3) == stats.mean_ci(values, seed=3)


def test_perplexity_interval_resamples_windows() -> None:
    nll, tokens = [100 * math.log(20)] * 5 + [100 * math.log(40)] * 5, [100] * 10
    assert stats.ppl(nll, tokens) == pytest.approx(math.sqrt(20 * 40))
    lo, hi = stats.ppl_ci(nll, tokens)
    assert 20 < lo < stats.ppl(nll, tokens) < hi < 40


def test_paired_difference_sign_and_significance() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.5).astype(int)
    worse = a.copy()
    worse[np.flatnonzero(a)[:40]] = 0  # 40 of the right answers become wrong: -0.1, paired
    diff, (lo, hi) = stats.paired_mean_diff(worse, a)
    assert diff == pytest.approx(-0.1) and hi < 0 and stats.significant([lo, hi])
    same_diff, interval = stats.paired_mean_diff(a, a)
    assert same_diff == 0 and interval == [0.0, 0.0] and not stats.significant(interval)
    noise = (rng.random(400) < 0.5).astype(int)
    assert not stats.significant(stats.paired_mean_diff(noise, a)[1]) or abs(noise.mean() - a.mean()) > 0.05


def test_paired_perplexity_difference() -> None:
    tokens = [100] * 20
    base = [100 * math.log(20)] * 20
    worse = [n + 100 * math.log(1.5) for n in base]  # every window 1.5x the perplexity
    diff, (lo, hi) = stats.paired_ppl_diff(worse, base, tokens)
    assert diff == pytest.approx(10.0) and lo == pytest.approx(10.0) and hi == pytest.approx(10.0)
    with pytest.raises(ValueError, match="paired windows differ"):
        stats.paired_ppl_diff(worse[:5], base, tokens)
