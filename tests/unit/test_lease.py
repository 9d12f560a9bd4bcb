"""The lease assignor's choices (pure): one holder for standby, spread for replicas."""

from __future__ import annotations

import math

from hypothesis import example, given
from hypothesis import strategies as st

from riverbed.streams.lease import choose_holder, spread_partitions

members_st = st.dictionaries(
    st.sampled_from("abcdef"),
    st.tuples(st.dictionaries(st.integers(0, 7), st.integers(0, 100), max_size=6),
              st.integers(0, 100)),
    min_size=1, max_size=5)
partitions_st = st.sets(st.integers(0, 7), max_size=6)


@given(members_st, partitions_st)
def test_every_partition_has_one_holder_and_nobody_more_than_a_fair_share(
    members: dict[str, tuple[dict[int, int], int]], partitions: set[int],
) -> None:
    dealt = spread_partitions(members, partitions)
    assert set(dealt) == set(members)
    held = [p for ps in dealt.values() for p in ps]
    assert sorted(held) == sorted(partitions)  # each exactly once, nothing else
    cap = math.ceil(len(partitions) / len(members))
    assert max(len(ps) for ps in dealt.values()) <= cap
    assert max(len(ps) for ps in dealt.values()) - min(len(ps) for ps in dealt.values()) <= 1


@given(members_st, partitions_st)
def test_a_partition_moves_only_from_a_member_over_its_fair_share(
    members: dict[str, tuple[dict[int, int], int]], partitions: set[int],
) -> None:
    dealt = spread_partitions(members, partitions)
    for member in members:  # what it won (latest acquirer), it keeps up to its share
        won = {p for p in partitions if max(
            ((held[p], m) for m, (held, _) in members.items() if p in held),
            default=(None, None))[1] == member}
        assert len(won & set(dealt[member])) == min(len(dealt[member]), len(won))


def test_a_joining_member_takes_the_newest_acquisition_of_the_busiest() -> None:
    dealt = spread_partitions({"old": ({2: 10, 3: 20}, 0), "new": ({}, 5)}, [2, 3])
    assert dealt == {"old": [2], "new": [3]}


def test_a_contested_partition_stays_with_its_latest_acquirer() -> None:
    # a paused zombie still claims partition 2; the member that acquired it later keeps it
    dealt = spread_partitions({"zombie": ({2: 10}, 0), "successor": ({2: 30}, 1)}, [2])
    assert dealt == {"zombie": [], "successor": [2]}


def test_a_free_partition_goes_to_the_member_waiting_longest() -> None:
    assert spread_partitions({"b": ({}, 9), "a": ({}, 3)}, [1]) == {"a": [1], "b": []}


def test_garbage_metadata_reads_as_a_newcomer_holding_nothing() -> None:
    from riverbed.streams.lease import _member_holdings
    assert _member_holdings(b"\xff not json") == ({}, 2**63)
    assert _member_holdings(b'{"held": {"x": 1}, "joined": 4}') == ({}, 2**63)
    assert _member_holdings(b'{"held": {"2": 7}, "joined": 4}') == ({2: 7}, 4)


def test_standby_lease_goes_to_the_holder_else_the_oldest_member() -> None:
    assert choose_holder({"a": (None, 1), "b": (5, 2)}) == "b"
    assert choose_holder({"a": (None, 1), "b": (None, 2)}) == "a"


def test_doctests() -> None:
    import doctest

    from riverbed.streams import lease
    assert doctest.testmod(lease).attempted >= 1 and doctest.testmod(lease).failed == 0


@given(st.lists(st.tuples(st.sampled_from(["join", "leave", "freeze", "thaw"]),
                          st.integers(0, 5)), max_size=30),
       st.sets(st.integers(0, 7), min_size=1, max_size=5))
# found by Hypothesis: a member back from a freeze claims what another now holds; the holder
# over its share gave up its own uncontested partition instead of the contested one
@example([("join", 0), ("join", 2), ("join", 1), ("freeze", 0), ("leave", 2), ("thaw", 0)],
         {0, 1})
@example([("join", 2), ("join", 0), ("join", 1), ("freeze", 1), ("leave", 0), ("thaw", 1)],
         {0, 1, 2})
def test_random_joins_leaves_and_frozen_members_keep_one_learner_per_partition(
    steps: list[tuple[str, int]], partitions: set[int],
) -> None:
    """A simulation of the spread lease over rebalances: members join, leave (stop or die),
    freeze (miss the rebalance: the group drops them, but they still think they hold what
    they held) and thaw (rejoin claiming their old holdings). After every rebalance each
    partition has exactly one holder among the members in the group, shares differ by one
    at most, and a member that stays keeps what it held up to its share."""
    clock = iter(range(1, 10**6))
    live: dict[str, tuple[dict[int, int], int]] = {}
    frozen: dict[str, tuple[dict[int, int], int]] = {}
    for action, n in steps:
        name = f"m{n}"
        if action == "join" and name not in live and name not in frozen:
            live[name] = ({}, next(clock))
        elif action == "leave":
            live.pop(name, None)
        elif action == "freeze" and name in live:
            frozen[name] = live.pop(name)
        elif action == "thaw" and name in frozen:
            live[name] = frozen.pop(name)  # claims what it held before it froze
        if not live:
            continue
        before = {m: set(held) for m, (held, _) in live.items()}
        dealt = spread_partitions(live, partitions)
        held = sorted(p for ps in dealt.values() for p in ps)
        assert held == sorted(partitions)
        counts = [len(ps) for ps in dealt.values()]
        assert max(counts) - min(counts) <= 1
        now = next(clock)
        for member, ps in dealt.items():  # what each now holds, and since when
            old, joined = live[member]
            live[member] = ({p: old.get(p, now) for p in ps}, joined)
            uncontested = {p for p in before[member] & partitions if not any(
                p in before[m] for m in before if m != member)}
            assert len(uncontested & set(ps)) == min(len(uncontested), len(ps))
