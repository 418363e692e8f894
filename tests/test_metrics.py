"""Metrics against scipy/numpy on random data, ties, and undefined cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from toolkit.scoring.metrics import average_ranks, evaluate_predictions, regression_metrics


@pytest.mark.parametrize("seed", range(5))
def test_against_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 400))
    gold = rng.uniform(0, 5, n)
    pred = gold + rng.normal(0, rng.uniform(0.1, 3), n)
    if seed % 2:  # ties, as STS-B gold scores have
        gold = np.round(gold * 5) / 5
        pred = np.round(pred, 1)
    m, warnings = regression_metrics(pred, gold)
    assert not warnings and m["n"] == n
    assert m["pearson"] == pytest.approx(stats.pearsonr(pred, gold).statistic, abs=1e-12)
    assert m["spearman"] == pytest.approx(stats.spearmanr(pred, gold).statistic, abs=1e-12)
    assert m["mse"] == pytest.approx(np.mean((pred - gold) ** 2), rel=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - gold) ** 2)), rel=1e-12)
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - gold)), rel=1e-12)


def test_average_ranks_match_scipy():
    x = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    np.testing.assert_array_equal(average_ranks(x), stats.rankdata(x))


def test_constant_predictions_warn_and_give_null():
    m, warnings = regression_metrics([2.5] * 10, np.linspace(0, 5, 10))
    assert m["pearson"] is None and m["spearman"] is None
    assert warnings == ["the predictions are constant (2.5): Pearson and Spearman are undefined (null)"]
    assert m["mse"] == pytest.approx(np.mean((2.5 - np.linspace(0, 5, 10)) ** 2))
    m, warnings = regression_metrics(np.linspace(0, 5, 10), [3.0] * 10)
    assert m["spearman"] is None and "gold scores are constant" in warnings[0]


def test_bootstrap_interval_and_groups():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 600)
    pred = gold + rng.normal(0, 1, 600)
    groups = np.array(["a", "b", "c"])[rng.integers(0, 3, 600)]
    m, _ = evaluate_predictions(pred, gold, groups.tolist())
    lo, hi = m["spearman_ci95"]
    assert lo < m["spearman"] < hi and hi - lo < 0.1
    assert set(m["groups"]) == {"a", "b", "c"}
    for g, row in m["groups"].items():
        mask = groups == g
        assert row["n"] == mask.sum()
        assert row["spearman"] == pytest.approx(stats.spearmanr(pred[mask], gold[mask]).statistic, abs=1e-12)
