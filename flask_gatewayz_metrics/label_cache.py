"""Bounded caches of label resolution for the request path.

``record_request`` turns its raw labels (endpoint, method, status, provider, model,
failed) into offsets of records in the worker file. Resolving a label (validation, the
``LabelGuard``, finding the record) costs several microseconds, so results are cached
in two levels, each bounded in memory and evicting its oldest entry one at a time
(first in, first out), never clearing wholesale:

* three *part* caches, keyed by the raw sub-key that decides a record: (endpoint,
  method, status, failed), (provider, status, failed), (model, status, failed). Their
  size follows the distinct values of each label, not the number of combinations, so
  two million endpoint x provider x model combinations need a few thousand entries;
* a *front* cache of whole combinations, one dict lookup on the common path (what the
  request path always did). When a workload has more combinations than it holds, a
  miss costs three part lookups, not a new resolution: no cliff. Once full it admits
  only one miss in ``FRONT_ADMIT_EVERY``, so such a workload does not pay an insertion
  and an eviction on every call.

Memory is accounted per entry (a fixed cost measured with ``tracemalloc``, see
``tests/test_label_cache.py``, plus the label strings an entry keeps alive) against a
byte budget per cache; together they stay under ``TOTAL_BUDGET_BYTES`` per collector
(and ``semconv``'s cache of GenAI offsets, the same kind of cache, under
``CONVENTIONS_BUDGET_BYTES``).
Label strings longer than ``MAX_CACHED_LABEL_LENGTH`` (or of a ``str`` subclass) are
resolved every time instead of cached, so a caller passing huge raw strings cannot make
a cache keep them.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Hashable

from .labels import MAX_LABEL_LENGTH

Offsets = tuple[int, ...]
MAX_CACHED_LABEL_LENGTH = MAX_LABEL_LENGTH
"""Longest label string a cache keeps (longer ones are resolved each time: they are
truncated labels anyway, and a cache must not keep huge strings alive)."""
PART_ENTRY_BYTES = 300
"""Upper bound of a part entry without its strings: key tuple, value tuple, two offsets
(ints), the dict slot at its emptiest after a resize, the eviction queue's pointer."""
FRONT_ENTRY_BYTES = 420
"""The same for a front entry: key and value 6-tuples, six offsets, dict and queue slots."""
FRONT_ADMIT_EVERY = 64
"""Once the front cache is full, only every 64th miss is admitted (evicting the oldest
entry): a combination that recurs gets back in quickly, while a workload of far more
combinations than fit pays the insertion and eviction on one miss in 64."""
ROUTE_BUDGET_BYTES = 2_560 * 1024
PROVIDER_BUDGET_BYTES = 512 * 1024
MODEL_BUDGET_BYTES = 1_536 * 1024
FRONT_BUDGET_BYTES = 2_560 * 1024
TOTAL_BUDGET_BYTES = ROUTE_BUDGET_BYTES + PROVIDER_BUDGET_BYTES + MODEL_BUDGET_BYTES + FRONT_BUDGET_BYTES
"""7 MiB: the request path's label caches of one collector."""
CONVENTIONS_BUDGET_BYTES = 512 * 1024
"""The conventions' GenAI offsets (``semconv``): with ``TOTAL_BUDGET_BYTES``, 7.5 MiB per
collector, under the 8 MiB per worker the project allows. An entry (a key of at most
five items, an offset pair) is charged ``front_entry_cost``, an upper bound of its size."""


def _strings_cost(key: tuple[object, ...]) -> int:
    """Bytes of the label strings in ``key`` (each counted, even if another entry shares
    it: an upper bound), or -1 if ``key`` holds a string that must not be cached."""
    cost = 0
    for item in key:
        if isinstance(item, str):
            if item.__class__ is not str or len(item) > MAX_CACHED_LABEL_LENGTH:
                return -1
            cost += sys.getsizeof(item)
    return cost


def part_entry_cost(key: tuple[object, ...]) -> int:
    """Bytes a part entry keeps alive (-1: not cacheable)."""
    strings = _strings_cost(key)
    return -1 if strings < 0 else PART_ENTRY_BYTES + strings


def front_entry_cost(key: tuple[object, ...]) -> int:
    """Bytes a front entry keeps alive (-1: not cacheable)."""
    strings = _strings_cost(key)
    return -1 if strings < 0 else FRONT_ENTRY_BYTES + strings


class BoundedCache:
    """A dict bounded by a byte budget that evicts its oldest entry one at a time.

    ``entries`` is the plain dict readers look up directly (the request path binds
    ``entries.get``); only ``put`` adds to it and only ``put`` and ``discard`` remove
    from it, so the insertion queue and the byte count stay exact (a discarded entry's
    place in the queue stays charged until it comes up for eviction). ``clear`` empties
    it in place (after a reset or fork, when every offset changes), keeping the dict
    object others hold.
    """

    __slots__ = ("_cost", "_order", "budget", "entries", "evictions", "full", "used")

    def __init__(self, budget_bytes: int, cost: Callable[[tuple[object, ...]], int]) -> None:
        self.entries: dict[Hashable, Offsets] = {}
        self._order: deque[tuple[object, ...]] = deque()
        self._cost = cost
        self.budget = budget_bytes
        self.used = 0
        """Bytes charged for the entries held now (never above ``budget``)."""
        self.evictions = 0
        self.full = False
        """Set once an entry had to be evicted (cleared with the cache)."""

    def put(self, key: tuple[object, ...], value: Offsets) -> None:
        """Keep ``value`` for ``key``, evicting the oldest entries to stay in budget
        (a key the cost function refuses, or larger than the budget, is not kept)."""
        entries = self.entries
        try:
            if key in entries:
                entries[key] = value
                return
        except TypeError:  # unhashable: never cached
            return
        cost = self._cost(key)
        if cost < 0 or cost > self.budget:
            return
        order = self._order
        while self.used + cost > self.budget:
            self.full = True
            oldest = order.popleft()
            entries.pop(oldest, None)  # (absent: discarded; or put again, and queued again too)
            self.used -= self._cost(oldest)
            self.evictions += 1
        entries[key] = value
        order.append(key)
        self.used += cost

    def discard(self, key: Hashable) -> None:
        """Forget ``key``'s entry if there is one (an unhashable key has none)."""
        try:
            self.entries.pop(key, None)
        except TypeError:
            pass

    def clear(self) -> None:
        """Forget every entry (the dict object stays the same)."""
        self.entries.clear()
        self._order.clear()
        self.used = 0
        self.full = False

    def __len__(self) -> int:
        return len(self.entries)
