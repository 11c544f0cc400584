"""Ordered, bounded prefetch on a thread pool: the one pattern behind the tiler's read path and
the embedding pipeline's store reads."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Executor
from typing import Callable, Iterable, Iterator, TypeVar

T, R = TypeVar("T"), TypeVar("R")
_END = object()


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """fn(item) for each item, in order, computed on `pool` with at most `ahead` in flight, so
    memory stays bounded whatever the number of items."""
    pending: deque = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(it, _END)
        if nxt is not _END:
            pending.append(pool.submit(fn, nxt))
        yield result
