"""A least-recently-used map bounded in bytes (and optionally in entries): the one shape of
every in-memory cache of the server (rendered packuments, small tarballs, finished answers).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SizedLRU(Generic[K, V]):
    """``size(value)`` bytes per entry; the oldest entries go once the total passes
    ``max_bytes`` or the count passes ``max_entries`` (the newest always stays). A value over
    ``max_item`` bytes is not kept at all."""

    def __init__(
        self,
        size: Callable[[V], int],
        *,
        max_bytes: int,
        max_entries: int | None = None,
        max_item: int | None = None,
    ) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._size = size
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._max_item = max_item
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
        else:
            self._items.move_to_end(key)
            self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        size = self._size(value)
        if self._max_item is not None and size > self._max_item:
            return
        self.drop(key)
        self._items[key] = value
        self._bytes += size
        while len(self._items) > 1 and (
            self._bytes > self._max_bytes
            or (self._max_entries is not None and len(self._items) > self._max_entries)
        ):
            _, old = self._items.popitem(last=False)
            self._bytes -= self._size(old)

    def drop(self, key: K) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= self._size(old)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
