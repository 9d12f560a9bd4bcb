"""Property tests for commit bookkeeping: monotonic, never past a confirmed batch."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from riverbed.streams.offsets import OffsetTracker

ops = st.lists(st.one_of(
    st.tuples(st.just("batch"), st.dictionaries(st.integers(0, 3), st.integers(1, 5), min_size=1)),
    st.tuples(st.just("confirm"), st.none()),
    st.tuples(st.just("commit"), st.none()),
    st.tuples(st.just("revoke"), st.sets(st.integers(0, 3), min_size=1)),
), max_size=60)


@given(ops)
def test_commit_positions_only_move_forward_to_confirmed_batches(operations: list) -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    fetched: dict[int, int] = {}       # partition -> next fetch offset
    in_flight: list[tuple[dict[int, int], int]] = []
    confirmed: dict[int, set[int]] = {}  # positions that a confirmed, current batch reached
    committed: dict[int, int] = {}
    for op, arg in operations:
        if op == "batch":
            nxt = {p: fetched.get(p, 0) + n for p, n in arg.items()}
            fetched.update(nxt)
            in_flight.append((nxt, tracker.generation))
        elif op == "confirm" and in_flight:
            nxt, generation = in_flight.pop(0)
            if tracker.done(nxt, generation):
                for p, o in nxt.items():
                    confirmed.setdefault(p, set()).add(o)
        elif op == "commit":
            pending = tracker.to_commit()
            for p, o in pending.items():
                assert o in confirmed[p]                      # only confirmed positions
                assert o > committed.get(p, -1)               # never backwards
            tracker.committed(pending)
            committed.update(pending)
        elif op == "revoke":
            tracker.revoke(arg)
            for p in arg:
                confirmed.pop(p, None)
                committed.pop(p, None)


def test_batches_from_before_a_revoke_are_ignored() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    old_generation = tracker.generation
    tracker.revoke([0])
    assert not tracker.done({0: 10}, old_generation)
    assert tracker.to_commit() == {}
    assert tracker.done({0: 10}, tracker.generation)
    assert tracker.to_commit() == {0: 10}
