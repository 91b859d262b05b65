"""The recall-floor trade-off that calibrate.py reports for the product owner's choice."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import safety_script


@pytest.fixture(scope="module")
def calibrate():
    return safety_script("calibrate")


def test_each_floor_gives_the_threshold_that_keeps_it_and_counts_what_fires(calibrate):
    positives = np.array([0.05, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    scores = np.array([0.01, 0.1, 0.25, 0.9, 0.01, 0.01])
    other = np.array([False, False, False, False, True, False])  # medical fired on row 4
    groups = {"a": np.array([1, 1, 1, 1, 0, 0], bool), "b": np.array([0, 0, 0, 0, 1, 1], bool)}
    rows = calibrate.floor_tradeoff(positives, scores, other, groups, floors=(1.0, 0.9, 0.8))
    # floor 1.0 keeps every positive: threshold just under the lowest one (0.05 -> 0.0499)
    assert rows[0] == {"floor": 1.0, "threshold": 0.0499, "recall": 1.0, "a": 0.75, "b": 0.5}
    # 0.9 lets one of ten go: just under the second lowest (0.2 -> 0.1999)
    assert rows[1] == {"floor": 0.9, "threshold": 0.1999, "recall": 0.9, "a": 0.5, "b": 0.5}
    assert rows[2]["threshold"] == 0.2999 and rows[2]["recall"] == 0.8


def test_a_lower_floor_never_redirects_more(calibrate):
    rng = np.random.default_rng(0)
    positives = rng.beta(5, 1, 300)
    scores = rng.beta(1, 5, 2000)
    groups = {"all": np.ones(2000, bool), "none": np.zeros(2000, bool)}
    rows = calibrate.floor_tradeoff(positives, scores, np.zeros(2000, bool), groups)
    assert [r["floor"] for r in rows] == list(calibrate.TRADEOFF_FLOORS)
    assert all(r["recall"] >= r["floor"] for r in rows)
    thresholds = [r["threshold"] for r in rows]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
    fired = [r["all"] for r in rows]
    assert fired == sorted(fired, reverse=True) and fired[0] > fired[-1]
    assert all(r["none"] is None for r in rows)  # an empty group has no rate
