"""The decoded-tile cache the CPU readers share between reads: least recently used out beyond a cap in bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class TileCache:
    """Decoded tiles by key, at most `cap` bytes (the least recently used go first; the newest always
    stays); safe to share between threads."""

    def __init__(self, cap: int):
        self.cap, self.bytes = cap, 0
        self._tiles: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key) -> np.ndarray | None:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, items) -> None:
        """Keep (key, decoded tile) pairs, dropping the least recently used beyond the cap."""
        with self._lock:
            for key, tile in items:
                self._tiles[key] = tile
                self.bytes += tile.nbytes
            while self.bytes > self.cap and len(self._tiles) > 1:
                _, old = self._tiles.popitem(last=False)
                self.bytes -= old.nbytes
