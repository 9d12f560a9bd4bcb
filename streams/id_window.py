"""The dedup window of a model's fold: the last N distinct event ids applied, in order.

Pure, no I/O. Semantics are those of an insertion-ordered set capped at ``size``: adding
an id already inside changes nothing (it keeps its place), and once more than ``size``
ids are held the oldest go first. The fold adds one ``Learned`` record's ids at a time --
every learned event, on the hot path -- so the common case (ids all new and distinct) is
a few C-level set and list operations per record instead of a Python step per id: the
``OrderedDict`` it replaces cost ~1.7 us per learned event once full (``popitem`` per id).

>>> window = IdWindow(3)
>>> window.extend(["a", "b"]); window.extend(["b", "c", "d"])
>>> list(window), "a" in window.members, "b" in window.members
(['b', 'c', 'd'], False, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence


class IdWindow:
    """The last ``size`` distinct ids added, oldest first; ``members`` answers ``in``."""

    __slots__ = ("_head", "_order", "members", "size")

    def __init__(self, size: int, ids: Iterable[str] = ()) -> None:
        self.size = size
        #: the ids held (the set a hot loop tests with ``in``; same object for the
        #: window's life: updated in place)
        self.members: set[str] = set()
        #: ``_order[_head:]`` is exactly ``members``, in the order they were added
        self._order: list[str] = []
        self._head = 0
        self.extend(list(ids))

    def __contains__(self, event_id: object) -> bool:
        return event_id in self.members

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order[self._head:])

    def extend(self, ids: Sequence[str]) -> None:
        """Add ``ids`` in order (ids already held keep their place), then drop the oldest
        beyond ``size``."""
        members = self.members
        fresh = set(ids)
        if len(fresh) == len(ids) and members.isdisjoint(fresh):
            members |= fresh
            self._order.extend(ids)
        else:  # a repeat, inside ids or of an id held: one at a time
            for event_id in ids:
                if event_id not in members:
                    members.add(event_id)
                    self._order.append(event_id)
        excess = len(members) - self.size
        if excess > 0:
            head = self._head
            members.difference_update(self._order[head : head + excess])
            self._head = head = head + excess
            if head > len(self._order) // 2:  # compact: amortised O(1) per id
                del self._order[:head]
                self._head = 0
