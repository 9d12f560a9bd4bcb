"""History events survive the Avro round trip exactly (property test)."""

from __future__ import annotations

from hypothesis import given, settings
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


LONG = st.integers(-(1 << 63), (1 << 63) - 1)
any_label = st.one_of(st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(),
                      st.text(max_size=70))
any_x = st.one_of(
    st.dictionaries(st.text(max_size=70), st.floats(), max_size=5),  # any keys, NaN too
    st.fixed_dictionaries({"a": finite, "b": finite}))                # dense rows


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.text(max_size=70), any_x, any_label), max_size=70),
       offsets=st.dictionaries(st.text(max_size=70), st.integers(-(1 << 70), 1 << 70),
                               max_size=4),
       epoch=LONG, time=LONG, seq=LONG, model=st.text(max_size=70),
       fingerprint=st.text(max_size=70))
def test_a_learned_is_written_as_fastavro_writes_it(
        rows: list, offsets: dict, epoch: int, time: int, seq: int, model: str,
        fingerprint: str) -> None:
    """encode_event writes a Learned directly; the bytes are fastavro's, and what fastavro
    refuses (a label or offset out of range) is refused still."""
    import io

    import fastavro
    import pytest

    from riverbed.streams.history_codec import _SCHEMA, _body_dict, _write_learned

    examples = tuple(Example(i, x, y) for i, x, y in rows)
    event = HistoryEvent(model, epoch, time, Learned(seq, seq, offsets, examples,
                                                     fingerprint))
    buffer = io.BytesIO()
    try:
        fastavro.schemaless_writer(buffer, _SCHEMA, {
            "model": model, "epoch": epoch, "time": time,
            "body": ("riverbed.Learned", _body_dict(event.body))})
    except (ValueError, TypeError, OverflowError) as refused:
        with pytest.raises(type(refused)):
            encode_event(event)
        return
    assert encode_event(event) == buffer.getvalue()
    if all(type(y) is not int or -(1 << 63) <= y < (1 << 63) for _, _, y in rows):
        assert _write_learned(event, event.body) == buffer.getvalue()  # not the fallback


@given(st.lists(st.tuples(feature_dict, label), max_size=20), st.data())
def test_examples_as_columns_read_like_the_rows_they_hold(rows: list,
                                                          data: st.DataObject) -> None:
    from riverbed.streams.history import Examples

    tuples = tuple(Example(f"e{i}", x, y) for i, (x, y) in enumerate(rows))
    columns = Examples([e.event_id for e in tuples], [e.x for e in tuples],
                       [e.y for e in tuples])
    assert columns == tuples and tuples == columns and list(columns) == list(tuples)
    assert Examples.of(tuples) == columns and Examples.of(columns) is columns
    assert len(columns) == len(tuples)
    start, stop = data.draw(st.integers(0, 20)), data.draw(st.integers(0, 20))
    assert columns[start:stop] == tuples[start:stop]
    if tuples:
        index = data.draw(st.integers(-len(tuples), len(tuples) - 1))
        assert columns[index] == tuples[index]
    if rows:  # a different label: not equal
        changed = Examples(columns.ids, columns.xs, (*columns.ys[:-1], object()))
        assert changed != columns and changed != tuples


def test_a_learned_whose_columns_disagree_in_length_is_refused_not_truncated() -> None:
    """A record on the history topic with more labels than event ids (anyone can write
    there) is a malformed event; a learner or replay skips it as such."""
    import io

    import fastavro
    import pytest

    from riverbed.streams.errors import DecodeError
    from riverbed.streams.history_codec import _SCHEMA, _body_dict

    event = HistoryEvent("m", 1, 2, Learned(1, 2, {"t:0": 2}, (
        Example("a", {"f": 1.0}, True), Example("b", {"f": 2.0}, False)), "fp"))
    body = _body_dict(event.body)
    body["event_ids"] = ["a"]  # two rows of values and labels, one id
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _SCHEMA, {"model": "m", "epoch": 1, "time": 2,
                                                 "body": ("riverbed.Learned", body)})
    with pytest.raises(DecodeError, match="malformed"):
        decode_event(buffer.getvalue())


def test_rows_with_distinct_keys_cost_their_own_values_and_old_records_still_read() -> None:
    """Sparse rows (map features) were written at the width of every name in the batch:
    2,000 events with 256 distinct keys each made 2,000 x 512,000 floats (8 GB). Each row
    now holds its own values; records in the old layout still read the same."""
    import struct

    from riverbed.streams.history_codec import decode_columns, encode_columns

    rows = [Example(f"e{i}", {f"k{i}-{j}": float(j) for j in range(5)}, 1) for i in range(200)]
    body = encode_columns(rows)
    assert not body["dense"] and len(body["values"]) == 200 * 5 * 8
    assert list(decode_columns(body)) == rows
    mixed = [Example("a", {"y": 1.0, "x": 2.0}, 0), Example("b", {"x": 3.0}, 1),
             Example("c", {"z": 4.0, "y": 5.0, "x": 6.0}, 0)]
    assert list(decode_columns(encode_columns(mixed))) == mixed
    assert [list(e.x) for e in decode_columns(encode_columns(mixed))] == [
        ["y", "x"], ["x"], ["z", "y", "x"]]  # each row's key order, for an exact replay
    nan = float("nan")  # the layout written before: every row at the width of all names
    old = {"event_ids": ["a", "b", "c"], "feature_names": ["y", "x", "z"], "labels": [0, 1, 0],
           "dense": False, "columns": [[0, 1], [1], [2, 0, 1]],
           "values": struct.pack("<9d", 1.0, 2.0, nan, nan, 3.0, nan, 5.0, 6.0, 4.0)}
    assert list(decode_columns(old)) == mixed


KEY = b"k" * 32


@given(st.binary(min_size=1, max_size=64), st.integers(0, 200), st.binary(max_size=40))
def test_a_record_is_taken_only_with_its_own_signature(flip: bytes, where: int,
                                                       junk: bytes) -> None:
    """Signed with the key: decoded. Changed anywhere, unsigned, signed with another key,
    or carrying any header bytes as a signature: refused before decoding (reason
    ``UNSIGNED_REASON``), never another exception. Without a key, any record decodes."""
    import pytest

    from riverbed.streams.errors import DecodeError
    from riverbed.streams.history_codec import (
        SIGNATURE_HEADER,
        UNSIGNED_REASON,
        decode_record,
        record_headers,
    )

    event = HistoryEvent("m", 2, 5, Learned(1, 1, {"t:0": 1},
                                            (Example("e", {"a": 1.0}, True),), "fp"), 7)
    value = encode_event(event)
    headers = record_headers(event, value, KEY)
    assert decode_record(value, 7, headers, KEY) == event
    changed = bytearray(value)
    changed[where % len(value)] ^= flip[0] or 1
    refused = [(bytes(changed), headers), (value, headers[:1]), (value, None),
               (value, record_headers(event, value, b"o" * 32)),
               (value, [(SIGNATURE_HEADER, junk)]), (value, [(SIGNATURE_HEADER, None)])]
    for payload, given_headers in refused:
        with pytest.raises(DecodeError) as error:
            decode_record(payload, 7, given_headers, KEY)
        assert str(error.value) == UNSIGNED_REASON
    assert decode_record(value, 7, None, None) == event
