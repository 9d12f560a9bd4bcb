"""Property tests of the history fold: duplicates, zombies and snapshots change nothing."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from riverbed.streams.history import (
    Claimed,
    Example,
    HistoryEvent,
    HistoryFold,
    Learn,
    Learned,
    Load,
    Restored,
    SnapshotChunk,
    examples_of,
    fold,
)

M = "m"


def ev(epoch: int, body: object, offset: int = -1) -> HistoryEvent:
    return HistoryEvent(M, epoch, 0, body, offset)  # type: ignore[arg-type]


def learned(seq_from: int, ids: list[str], offset: int) -> Learned:
    examples = tuple(Example(i, {"x": 1.0}, 1) for i in ids)
    return Learned(seq_from, seq_from + len(ids) - 1, {"t:0": offset}, examples, f"fp{seq_from}")


@st.composite
def clean_history(draw: st.DrawFn) -> list[HistoryEvent]:
    """A clean history: claims by increasing epochs, contiguous Learned batches."""
    events = [ev(1, Claimed("a"))]
    epoch, seq, n = 1, 0, 0
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
            epoch += 1
            events.append(ev(epoch, Claimed(f"o{epoch}")))
        size = draw(st.integers(0, 4))
        ids = [f"e{n + i}" for i in range(size)]
        n += size
        events.append(ev(epoch, learned(seq + 1, ids, n)))
        seq += size
    return events


def snapshot_events(state: HistoryFold, model_ids: list[str], epoch: int) -> list[HistoryEvent]:
    payload = pickle.dumps({"model": list(model_ids), "fold": state.export_state()})
    chunks = [payload[i : i + 50] for i in range(0, len(payload), 50)]
    return [ev(epoch, SnapshotChunk("s", "checkpoint", state.seq, state.lineage, i, len(chunks),
                                    c, "sha", "hmac", "fp")) for i, c in enumerate(chunks)]


@st.composite
def noisy(draw: st.DrawFn) -> tuple[list[HistoryEvent], list[HistoryEvent]]:
    """(clean, clean + duplicated records + stale-epoch zombie writes + snapshots)."""
    clean = draw(clean_history())
    noisy_events: list[HistoryEvent] = []
    state = HistoryFold(M)
    applied: list[str] = []
    for event in clean:
        noisy_events.append(event)
        effect = state.apply(event)
        if isinstance(effect, Learn):
            applied += [x.event_id for x in effect.examples]
        if isinstance(event.body, Learned) and draw(st.booleans()):
            noisy_events.append(event)  # a re-sent (duplicate) record
        if state.epoch > 1 and draw(st.booleans()):  # zombie of an older epoch writes on
            zombie = learned(state.seq + 1, ["z1", "z2"], 10**6)
            noisy_events.append(ev(state.epoch - 1, zombie))
            noisy_events.append(ev(state.epoch - 1, Claimed("zombie")))
        if draw(st.integers(0, 3)) == 0:
            noisy_events += snapshot_events(state, applied, state.epoch)
    return clean, noisy_events


@settings(max_examples=200)
@given(noisy())
def test_duplicates_zombies_and_snapshots_fold_to_the_clean_state(pair: tuple) -> None:
    clean, noisy_events = pair
    clean_state, clean_effects = fold(M, clean)
    noisy_state, noisy_effects = fold(M, noisy_events)
    assert noisy_state.signature() == clean_state.signature()
    assert examples_of(noisy_effects) == examples_of(clean_effects)
    zombie_writes = sum(1 for e in noisy_events if isinstance(e.body, Learned)
                        and any(x.event_id == "z1" for x in e.body.examples))
    # a re-sent *empty* Learned (offsets only) re-applies harmlessly, so count non-empty ones
    def non_empty(events: list[HistoryEvent]) -> int:
        return sum(1 for e in events if isinstance(e.body, Learned) and e.body.examples)
    duplicates = non_empty(noisy_events) - zombie_writes - non_empty(clean)
    assert noisy_state.counters.stale_writes == zombie_writes
    assert noisy_state.counters.duplicate_writes == duplicates


@settings(max_examples=200)
@given(noisy(), st.data())
def test_fold_from_any_snapshot_equals_fold_from_genesis(pair: tuple, data: st.DataObject) -> None:
    _, events = pair
    genesis, genesis_effects = fold(M, events)
    snapshot_ends = [i for i, e in enumerate(events) if isinstance(e.body, SnapshotChunk)
                     and e.body.index == e.body.count - 1]
    if not snapshot_ends:
        return
    end = data.draw(st.sampled_from(snapshot_ends))
    prefix_state, _ = fold(M, events[: end + 1])
    if not prefix_state.snapshots:
        return  # that snapshot was rejected (e.g. written mid-way); nothing to resume from
    snap = pickle.loads(prefix_state.snapshots[-1].payload)
    resumed = HistoryFold(M)
    resumed.import_state(snap["fold"])
    model = list(snap["model"])
    for event in events[end + 1 :]:
        effect = resumed.apply(event)
        if isinstance(effect, Learn):
            model += [x.event_id for x in effect.examples]
    assert resumed.signature() == genesis.signature()
    assert model == [x.event_id for x in examples_of(genesis_effects)]


def test_stale_epoch_write_is_ignored_and_counted() -> None:
    events = [ev(1, Claimed("a")), ev(2, Claimed("b")), ev(1, learned(1, ["x"], 1)),
              ev(2, learned(1, ["y"], 1)), ev(1, Claimed("a-again"))]
    state, effects = fold(M, events)
    assert [x.event_id for x in examples_of(effects)] == ["y"]
    assert state.counters.stale_writes == 1 and state.counters.stale_claims == 1


def test_a_claim_that_skips_epochs_is_ignored_and_counted() -> None:
    """Every claim is the epoch after the one its writer folded: a Claimed further ahead is
    not riverbed's. One at 2**63 - 1 made the owner's next claim overflow the Avro long,
    so no worker could start again."""
    events = [ev(1, Claimed("a")), ev(1, learned(1, ["x"], 1)), ev(2**63 - 1, Claimed("forged")),
              ev(3, Claimed("forged")), ev(1, learned(2, ["y"], 2)), ev(2, Claimed("b")),
              ev(2, learned(3, ["z"], 3))]
    state, effects = fold(M, events)
    assert [x.event_id for x in examples_of(effects)] == ["x", "y", "z"]
    assert state.epoch == 2 and state.counters.skipping_claims == 2
    assert state.counters.stale_claims == 0


def test_gap_and_duplicate_are_distinguished() -> None:
    events = [ev(1, Claimed("a")), ev(1, learned(1, ["a", "b"], 2)),
              ev(1, learned(1, ["a", "b"], 2)), ev(1, learned(5, ["c"], 3))]
    state, _ = fold(M, events)
    assert state.seq == 2
    assert state.counters.duplicate_writes == 1 and state.counters.gap_writes == 1


def test_restored_loads_its_rollback_snapshot_and_bumps_lineage() -> None:
    events = [ev(1, Claimed("a")), ev(1, learned(1, ["a", "b", "c"], 3)),
              ev(2, Claimed("cli")),
              ev(2, SnapshotChunk("r", "rollback", 1, 0, 0, 1, b"p", "s", "h", "fp1")),
              ev(2, Restored(1, "r", "bad data"))]
    state, effects = fold(M, events)
    assert isinstance(effects[-1], Load) and state.seq == 1 and state.lineage == 1
    assert state.seen("c")  # discarded examples are not learned again on redelivery
    wrong = events[:-1] + [ev(2, Restored(2, "r", "seq mismatch"))]
    state, _ = fold(M, wrong)
    assert state.lineage == 0 and state.counters.rejected_restores == 1
