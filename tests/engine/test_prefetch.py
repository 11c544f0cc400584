"""engine.prefetch.ordered_map: results in input order, at most `ahead` calls in flight, items drawn
only as results are taken, an error raised where its item stands."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.prefetch import ordered_map


def test_results_come_in_input_order_though_later_items_finish_first():
    def slow_first(i):
        time.sleep(0.02 * (5 - i))
        return i * i

    with ThreadPoolExecutor(5) as pool:
        assert list(ordered_map(pool, slow_first, range(5), ahead=5)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("ahead", [1, 3])
def test_at_most_ahead_calls_in_flight(ahead):
    lock, running, most = threading.Lock(), [0], [0]

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.03)  # long enough for every call let in to overlap, even on a busy machine
        with lock:
            running[0] -= 1
        return i

    with ThreadPoolExecutor(8) as pool:  # more workers than `ahead`: the bound is ordered_map's
        assert list(ordered_map(pool, work, range(12), ahead=ahead)) == list(range(12))
    assert most[0] == ahead


def test_items_are_drawn_only_as_results_are_taken():
    drawn = []

    def items():
        for i in range(100):
            drawn.append(i)
            yield i

    with ThreadPoolExecutor(2) as pool:
        results = ordered_map(pool, lambda i: -i, items(), ahead=4)
        assert drawn == []  # a generator: nothing runs before the first result is asked for
        assert next(results) == 0
        assert drawn == [0, 1, 2, 3, 4]  # the first `ahead`, then one more for the slot taken
        assert next(results) == -1
        assert drawn == [0, 1, 2, 3, 4, 5]


def test_an_error_is_raised_at_its_item_after_the_results_before_it():
    def fail_on_two(i):
        if i == 2:
            raise ValueError("item 2")
        return i

    with ThreadPoolExecutor(4) as pool:
        results = ordered_map(pool, fail_on_two, range(5), ahead=3)
        assert [next(results), next(results)] == [0, 1]
        with pytest.raises(ValueError, match="item 2"):
            next(results)


def test_no_items_no_results():
    with ThreadPoolExecutor(1) as pool:
        assert list(ordered_map(pool, str, [], ahead=2)) == []
