"""The seed-difference statistics behind every report's Findings: known values and invariants."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pclab.studies.stats import Interval, claim, describe, mean_interval, paired_difference, t_quantile

finite = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)


def test_t_quantiles_match_the_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, rel=1e-6)
    assert t_quantile(0.975, 2) == pytest.approx(4.3026527, rel=1e-6)
    assert t_quantile(0.975, 30) == pytest.approx(2.0422725, rel=1e-6)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.975, 0)


def test_interval_of_one_two_three_is_the_textbook_one():
    got = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)
    assert (got.mean, got.n) == (2.0, 3)
    assert got.low == pytest.approx(2.0 - half) and got.high == pytest.approx(2.0 + half)


def test_paired_difference_is_the_interval_of_the_differences():
    a, b = [80.0, 82.0, 81.0], [79.0, 80.5, 80.0]
    got, expected = paired_difference(a, b), mean_interval([1.0, 1.5, 1.0])
    assert (got.mean, got.low, got.high, got.n) == pytest.approx((expected.mean, expected.low, expected.high, 3))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_one_seed_has_no_interval_and_says_so():
    one = paired_difference([81.0], [80.0])
    assert one.n == 1 and one.mean == 1.0 and not one.computable and math.isnan(one.low)
    text = claim("pc minus bp", one)
    assert text == "pc minus bp: +1.00 points (n=1 seed: the interval cannot be computed)."
    assert "no detectable" not in text and "within" not in text
    assert describe(mean_interval([])) == "no paired result"
    assert mean_interval([1.0, math.nan]).n == 1  # non-finite values drop out


def test_sentences_on_hand_made_intervals():
    assert describe(Interval(0.2, -0.5, 0.9, 3)) == "+0.20 points (95 % CI -0.50 to +0.90, n=3 seeds): no detectable difference, within 1 point"
    assert describe(Interval(0.2, -1.5, 1.9, 3)) == "+0.20 points (95 % CI -1.50 to +1.90, n=3 seeds): no detectable difference"
    assert describe(Interval(0.6, 0.3, 0.9, 5)) == "+0.60 points (95 % CI +0.30 to +0.90, n=5 seeds): within 1 point"
    assert describe(Interval(-3.0, -4.0, -2.0, 5)) == "-3.00 points (95 % CI -4.00 to -2.00, n=5 seeds)"
    assert describe(Interval(0.6, 0.3, 0.9, 5), unit="%", within=None) == "+0.60 % (95 % CI +0.30 to +0.90, n=5 seeds)"


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12), finite, st.floats(min_value=0.5, max_value=0.99))
def test_interval_holds_the_mean_moves_with_a_shift_and_widens_with_confidence(values, shift, confidence):
    got = mean_interval(values, confidence)
    assert got.low <= got.mean + 1e-9 and got.mean <= got.high + 1e-9
    moved = mean_interval([v + shift for v in values], confidence)
    assert moved.low == pytest.approx(got.low + shift, abs=1e-6) and moved.high == pytest.approx(got.high + shift, abs=1e-6)
    wider = mean_interval(values, min(0.999, confidence + 0.005))
    assert wider.high - wider.low >= got.high - got.low - 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12))
def test_the_sentence_never_claims_more_than_the_interval(values):
    got = mean_interval(values)
    text = describe(got)
    assert ("no detectable difference" in text) == (got.low <= 0.0 <= got.high)
    assert ("within 1 point" in text) == (-1.0 <= got.low and got.high <= 1.0)


def test_coverage_of_the_95_interval_is_about_95_percent():
    rng = np.random.default_rng(0)
    covered = sum((lambda i: i.low <= 1.5 <= i.high)(mean_interval(rng.normal(1.5, 1.0, size=5))) for _ in range(4000))
    assert covered / 4000 == pytest.approx(0.95, abs=0.015)


def test_a_bounded_quantity_keeps_its_interval_inside_its_range():
    got = Interval(0.97, 0.81, 1.12, 2).clipped(-1.0, 1.0)
    assert (got.mean, got.low, got.high, got.n) == (0.97, 0.81, 1.0, 2)
    assert describe(got, unit="", digits=3, within=None, null="no detectable alignment") == "+0.970 (95 % CI +0.810 to +1.000, n=2 seeds)"
    assert "no detectable alignment" in describe(Interval(0.1, -0.2, 0.4, 3), unit="", within=None, null="no detectable alignment")
