"""History events survive the Avro round trip exactly (property test)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from riverbed.streams.history import Claimed, Example, HistoryEvent, Learned, Restored
from riverbed.streams.history_codec import decode_event, encode_event

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
feature_dict = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), finite, max_size=4)
label = st.one_of(st.booleans(), st.integers(-10, 10), finite, st.text(min_size=1, max_size=5))


@given(st.lists(st.tuples(feature_dict, label), max_size=20))
def test_learned_round_trip(rows: list) -> None:
    examples = tuple(Example(f"e{i}", x, y) for i, (x, y) in enumerate(rows))
    event = HistoryEvent("m", 3, 123, Learned(1, len(rows), {"t:0": 7}, examples, "fp"), 5)
    decoded = decode_event(encode_event(event), 5)
    assert decoded == event
    for original, back in zip(examples, decoded.body.examples):  # type: ignore[union-attr]
        assert list(back.x) == list(original.x)  # same dict order: exact replay
        assert type(back.y) is type(original.y)


def test_other_bodies_round_trip() -> None:
    for body in (Claimed("owner"), Restored(4, "snap", "why")):
        event = HistoryEvent("m", 1, 2, body, 9)
        assert decode_event(encode_event(event), 9) == event
