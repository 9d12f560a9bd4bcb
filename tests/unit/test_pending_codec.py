"""The pending-log record: events, features (exact floats, same key order) and labels."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from riverbed.streams.pending import EarlyLabel, PendingEvent, Prediction
from riverbed.streams.pending_codec import decode_pending, encode_pending

FLOATS = st.floats(allow_nan=False, width=64)
NAMES = st.sampled_from(["salary", "age", "loan", "extra.a", "extra.b"])
X = st.dictionaries(NAMES, FLOATS, max_size=5)
PROBA = st.dictionaries(st.one_of(st.booleans(), st.integers(0, 3), st.text(max_size=3)),
                        st.floats(0, 1), max_size=3)
MADE = st.tuples(st.sampled_from(["lr", "tree"]), X,
                 st.one_of(st.none(), st.booleans(), st.integers(0, 3)), PROBA,
                 st.integers(0, 10**9))
EVENTS = st.lists(st.builds(PendingEvent, st.text(min_size=1, max_size=8),
                            st.lists(MADE, max_size=2).map(tuple),
                            st.integers(0, 2**45), st.integers(0, 2**45)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_events_round_trip_with_exact_features_in_their_key_order(
        events: list[PendingEvent]) -> None:
    label = EarlyLabel("e1", 1, 5, 6, b"\x00raw", ("labels", 2, 9))
    decoded, labels = decode_pending(encode_pending(events, [label]))
    assert decoded == events and labels == [label]
    for got, sent in zip(decoded, events, strict=True):
        assert [list(m[1]) for m in got.predictions] == [list(m[1]) for m in sent.predictions]


def test_infinite_features_survive_and_version_1_records_still_read() -> None:
    made = Prediction("lr", {"b": math.inf, "a": -0.0}, True, {True: 0.5}, 3)
    event = PendingEvent("e", (made,), 1, 2)
    (decoded,), _ = decode_pending(encode_pending([event], []))
    assert decoded == event and math.copysign(1, decoded.predictions[0][1]["a"]) == -1
    old = json.dumps({"events": [["e", [["lr", {"b": 1.5}, True, [[True, 0.5]], 3]], 1, 2]],
                      "labels": []}).encode()
    (legacy,), _ = decode_pending(old)
    assert legacy == PendingEvent("e", (Prediction("lr", {"b": 1.5}, True, {True: 0.5}, 3),), 1, 2)
