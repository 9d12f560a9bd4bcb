"""Property (issue riverbed 5, point 8): any interleaving of re-appended records (authentic
snapshots, rollbacks, claims, Learned batches), garbage bytes, snapshots moved to another
place, and stale writes folds to exactly the clean history's state and effects."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from riverbed.streams.errors import DecodeError
from riverbed.streams.history import (
    Claimed,
    Created,
    Effect,
    Example,
    HistoryEvent,
    HistoryFold,
    Learn,
    Learned,
    Load,
    Restored,
    SnapshotChunk,
)
from riverbed.streams.history_codec import decode_event, encode_event
from riverbed.streams.snapshots import (
    index_entry_ok,
    make_chunks,
    sign_index_entry,
    snapshot_verifier,
)

KEY = os.urandom(32)
MODEL = "m"


def _event(epoch: int, body: object) -> HistoryEvent:
    return HistoryEvent(MODEL, epoch, 1_000, body)  # type: ignore[arg-type]


def _learned(epoch: int, seq: int, n: int, tag: str) -> HistoryEvent:
    examples = tuple(Example(f"{tag}-{i}", {"a": float(i)}, i % 2) for i in range(n))
    return _event(epoch, Learned(seq + 1, seq + n, {"events:0": seq + n}, examples, f"fp{seq}"))


def _snapshot(epoch: int, seq: int, lineage: int, purpose: str = "checkpoint"
              ) -> list[HistoryEvent]:
    chunks = make_chunks({"weights": seq}, {"seq": seq, "lineage": lineage}, KEY,
                         purpose=purpose, seq=seq, lineage=lineage, model_fingerprint=f"fp{seq}",
                         model=MODEL, epoch=epoch)
    return [_event(epoch, c) for c in chunks]


def clean_history() -> list[HistoryEvent]:
    """Two owners, checkpoints, a rollback to seq 5 (lineage 1), learning after it."""
    events = [_event(0, Created("{}", "h", "0", ())), _event(1, Claimed("w1")),
              _learned(1, 0, 5, "a"), *_snapshot(1, 5, 0), _learned(1, 5, 5, "b"),
              _event(2, Claimed("w2")), _learned(2, 10, 5, "c"), *_snapshot(2, 15, 0),
              _event(3, Claimed("riverbed-rollback")), *_snapshot(3, 5, 0, "rollback")]
    rollback_id = events[-1].body.snapshot_id  # type: ignore[union-attr]
    events += [_event(3, Restored(5, rollback_id, "bad data")), _event(4, Claimed("w2")),
               _learned(4, 5, 5, "d"), *_snapshot(4, 10, 1), _learned(4, 10, 3, "e")]
    return events


def fold_records(records: list[bytes]) -> tuple[HistoryFold, list[Effect]]:
    """Decode (skipping what does not decode) and fold with snapshot verification."""
    state = HistoryFold(MODEL, verify=snapshot_verifier(KEY))
    effects = []
    for offset, payload in enumerate(records):
        try:
            event = decode_event(payload, offset)
        except DecodeError:
            continue
        effect = state.apply(event)
        if effect is not None:
            effects.append(effect)
    return state, effects


def _summary(effects: list[Effect]) -> list[object]:
    return [tuple(x.event_id for x in e.examples) if isinstance(e, Learn)
            else ("load", e.snapshot.snapshot_id) for e in effects if isinstance(e, Learn | Load)]


def _places(state: HistoryFold) -> set[tuple[str, int, int, int]]:
    return {(s.snapshot_id, s.epoch, s.seq, s.lineage) for s in state.snapshots}


CLEAN = [encode_event(e) for e in clean_history()]
#: where epoch 2 is claimed in the clean history (epoch 1 is stale from there on)
CLAIMED_2 = next(i for i, e in enumerate(clean_history())
                 if isinstance(e.body, Claimed) and e.epoch == 2)
CLEAN_STATE, CLEAN_EFFECTS = fold_records(CLEAN)


def _moved(payload: bytes, epoch: int) -> bytes:
    """An authentic snapshot chunk re-labelled with another epoch (its HMAC does not fit)."""
    event = decode_event(payload)
    return encode_event(dataclasses.replace(event, epoch=epoch))


hostile = st.lists(st.tuples(
    st.sampled_from(["garbage", "reappend", "move", "stale"]),
    st.integers(0, len(CLEAN) - 1),  # which record (re-appended after its original)
    st.integers(0, 10**6),           # where, after it
    st.binary(max_size=40),
), max_size=12)


@settings(max_examples=300, deadline=None)
@given(hostile)
@example([("stale", 4, 0, b"")])  # found in CI: a "stale" write placed while epoch 1 was current
def test_hostile_records_fold_to_the_clean_state(operations: list[tuple[str, int, int, bytes]],
                                                 ) -> None:
    records: list[tuple[float, bytes]] = [(float(i), r) for i, r in enumerate(CLEAN)]
    for n, (kind, source, where, junk) in enumerate(operations):
        position = source + 0.5 + (where % (len(CLEAN) - source)) + n * 1e-6
        if kind == "garbage":
            payload = junk
        elif kind == "reappend":
            payload = CLEAN[source]
        elif kind == "move":
            event = decode_event(CLEAN[source])
            if not isinstance(event.body, SnapshotChunk):
                continue
            payload = _moved(CLEAN[source], event.epoch + 1 + where % 3)
        else:  # a stale write: epoch 1's owner, appended after epoch 2 claimed (an
            # epoch-1 write while epoch 1 is current is that owner's own, legitimate)
            position = CLAIMED_2 + 0.5 + where % (len(CLEAN) - CLAIMED_2) + n * 1e-6
            payload = encode_event(_learned(1, 10 + where % 20, 2, f"zombie{n}"))
        records.append((position, payload))
    state, effects = fold_records([payload for _, payload in sorted(records)])
    assert state.signature() == CLEAN_STATE.signature()
    assert _summary(effects) == _summary(CLEAN_EFFECTS)
    assert _places(state) == _places(CLEAN_STATE)  # restore points: only authentic ones


def test_the_clean_history_rolls_back_and_goes_on() -> None:
    assert (CLEAN_STATE.seq, CLEAN_STATE.lineage, CLEAN_STATE.epoch) == (13, 1, 4)
    assert [s.seq for s in CLEAN_STATE.snapshots] == [5, 15, 10]
    assert sum(isinstance(e, Load) for e in CLEAN_EFFECTS) == 1


@pytest.mark.parametrize("signature", ["\u00e9", "", "0" * 64])
def test_any_text_as_a_signature_is_refused_not_raised(signature: str) -> None:
    """A snapshot chunk or snapshot-index entry read from a topic with any text as its
    HMAC (non-ASCII text made ``hmac.compare_digest`` raise) is a refused snapshot."""
    history = clean_history()
    records = [encode_event(dataclasses.replace(e, body=dataclasses.replace(
        e.body, hmac=signature)) if isinstance(e.body, SnapshotChunk)
        and e.body.purpose == "rollback" else e) for e in history]
    state, effects = fold_records(records)
    assert not any(isinstance(e, Load) for e in effects)
    assert state.counters.rejected_restores == 1
    entry = sign_index_entry({"marker": "claimed", "epoch": 1}, MODEL, KEY)
    assert index_entry_ok(entry, MODEL, KEY)
    assert not index_entry_ok({**entry, "hmac": signature}, MODEL, KEY)
    assert not index_entry_ok({**entry, "hmac": "\udc80"}, MODEL, KEY)  # JSON can say it
    assert not index_entry_ok({**entry, "hmac": 1}, MODEL, KEY)


def test_a_snapshot_moved_to_another_epoch_is_refused_not_loaded() -> None:
    history = clean_history()
    rollback = [i for i, e in enumerate(history) if isinstance(e.body, SnapshotChunk)
                and e.body.purpose == "rollback"]
    records = [encode_event(e) for e in history]
    for i in rollback:  # the rollback snapshot, re-signed nowhere, claimed for epoch 4
        records[i] = _moved(records[i], 99)
    state, effects = fold_records(records)
    assert not any(isinstance(e, Load) for e in effects)
    assert state.counters.rejected_restores == 1


@pytest.mark.parametrize("time_ms", [2**62, -2**62, 2**63 - 1])
def test_a_history_record_at_any_time_is_listed_not_raised(time_ms: int) -> None:
    """`riverbed history` lists any record a topic holds; a time no date has (it printed a
    traceback) is shown in milliseconds."""
    from riverbed.cli_history import history_rows

    events = [dataclasses.replace(e, time=time_ms) for e in clean_history()]
    rows = history_rows([decode_event(encode_event(e), i) for i, e in enumerate(events)])
    assert rows and all(row["time"] == f"{time_ms} ms" for row in rows)
    assert history_rows(clean_history()[:1])[0]["time"] == "1970-01-01T00:00:01.000+00:00"


def test_snapshots_that_never_complete_hold_no_memory_for_good() -> None:
    """First chunks of snapshots whose other chunks never come (any epoch) were kept for
    the fold's life; at most UNFINISHED_SNAPSHOTS are, and a complete one still lands."""
    from riverbed.streams.history import UNFINISHED_SNAPSHOTS

    state = HistoryFold(MODEL, verify=snapshot_verifier(KEY))
    for event in clean_history()[:3]:  # created, claimed (epoch 1), 5 learned
        state.apply(event)
    for n in range(20):
        big = make_chunks({"blob": os.urandom(64)}, {"seq": 5}, KEY, purpose="checkpoint",
                          seq=5, lineage=0, model_fingerprint="f", model=MODEL, epoch=1)
        state.apply(_event(1, dataclasses.replace(big[0], count=2, index=0)))
    assert len(state._chunks) <= UNFINISHED_SNAPSHOTS
    for event in _snapshot(1, 5, 0):
        state.apply(event)
    assert [s.seq for s in state.snapshots] == [5]
