"""Success-rate intervals: Wilson for one rate, normal over paired differences."""
import math

import pytest

from tinyvla_grpo_ros.core.intervals import paired_interval, wilson_interval


def test_wilson_interval_matches_the_textbook_values_and_stays_in_0_1():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)        # Wilson 1927, z = 1.96
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    narrow, wide = wilson_interval(50, 100), wilson_interval(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_paired_interval_is_centred_on_the_mean_difference_and_shrinks_with_pairs():
    m, lo, hi = paired_interval([1, 0, 1, 1, 0, 1, 0, 1])
    assert m == pytest.approx(0.625) and lo < m < hi
    assert paired_interval([0.1] * 5)[1:] == pytest.approx((0.1, 0.1))   # no spread, no width
    _, lo2, hi2 = paired_interval([1, 0, 1, 1, 0, 1, 0, 1] * 4)
    assert hi2 - lo2 < hi - lo
    assert math.isnan(paired_interval([1.0])[1])
