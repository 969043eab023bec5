"""``test_size`` means the same for every dataset (issue 13, item 8): an int is a count, a
float in (0, 1) a fraction."""

import pytest

from robustagg import data
from robustagg.data.base import resolve_test_size


@pytest.mark.parametrize("name, n, count, fraction", [("digits", 1797, 359, 0.2), ("synthetic", 1000, 250, 0.25)])
def test_a_count_and_the_equal_fraction_give_the_same_split(name, n, count, fraction):
    by_count, by_fraction = data.load(name, test_size=count), data.load(name, test_size=fraction)
    assert by_count.test_size == by_fraction.test_size == count
    assert by_count.train_size == n - count
    assert (by_count.y_test == by_fraction.y_test).all()


def test_the_defaults_are_unchanged():
    assert data.load("digits").test_size == 360
    assert data.load("synthetic").test_size == 200


@pytest.mark.parametrize("value, error, match", [
    (1.0, ValueError, "fraction"), (360.0, ValueError, "integer"), (0, ValueError, ">= 1"),
    (1797, ValueError, "<= 1796"), ("0.2", TypeError, "count"), (True, TypeError, "count"),
])
def test_bad_test_sizes_name_the_parameter(value, error, match):
    with pytest.raises(error, match=match) as info:
        resolve_test_size(value, 1797)
    assert "test_size" in str(info.value)
    with pytest.raises(error):
        data.load("digits", test_size=value)
