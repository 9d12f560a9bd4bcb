"""The API's request checks and OpenAPI document (pure), and the history summary."""

from __future__ import annotations

import json
from typing import Any

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.api_schema import (
    ApiError,
    EventForm,
    history_query,
    openapi_document,
    parse_json,
    predict_events,
)
from riverbed.streams.config import EventSettings, settings_from_dict
from riverbed.streams.errors import ConfigError
from riverbed.streams.history import (
    Annotated,
    Claimed,
    HistoryEvent,
    Learned,
    Restored,
    SnapshotChunk,
)
from riverbed.streams.history_summary import HistorySummary

FORM = EventForm(load_schema("agrawal_event"), EventSettings())
EVENT = {"salary": 1.0, "commission": 0.0, "age": 30, "elevel": 1, "car": 3, "zipcode": 2,
         "hvalue": 1.0, "hyears": 10, "loan": 2.0}


def _refused(body: Any, max_events: int = 10) -> ApiError:
    with pytest.raises(ApiError) as refused:
        predict_events(body, FORM, max_events, now_ms=5)
    return refused.value


def test_an_event_gets_its_metadata_filled_in() -> None:
    (record,) = predict_events(EVENT, FORM, 10, now_ms=5)
    assert record == {**EVENT, "event_id": "api-0", "key": "", "timestamp": 5, "label": None}
    second = predict_events([EVENT, {**EVENT, "event_id": "x"}], FORM, 10, now_ms=5)[1]
    assert second["event_id"] == "x"


@pytest.mark.parametrize("body,status,field", [
    ({**EVENT, "age": True}, 422, "event.age"),          # a boolean is not an int
    ({**EVENT, "age": 2**31}, 422, "event.age"),          # out of Avro int
    ({**EVENT, "salary": 10**400}, 422, "event.salary"),  # not a double
    ({**EVENT, "key": "\ud800"}, 422, "event.key"),        # not UTF-8
    ({**EVENT, "label": "1"}, 422, "event.label"),
    ({**EVENT, "nope": 1}, 422, "event.nope"),
    ([EVENT] * 11, 422, "body"),  # over the document's maxItems (was 413: the fuzz test)
    ([], 400, "body"),
    (None, 400, "body"),
    ([EVENT, 1], 422, "events[1]"),
])
def test_refusals_name_the_field(body: Any, status: int, field: str) -> None:
    error = _refused(body)
    assert (error.status, error.field) == (status, field)
    assert json.loads(json.dumps(error.body()))["field"] == field


def test_json_refusals() -> None:
    for raw in (b"{", b"[" * 50_000, b"\xff", b"x"):
        with pytest.raises(ApiError) as refused:
            parse_json(raw)
        assert refused.value.status == 400
    assert parse_json(b"NaN") != parse_json(b"NaN")  # accepted; the features refuse it


def test_history_query() -> None:
    assert history_query({"from_seq": "5", "limit": "7"}).limit == 7
    for query, field in (({"limit": "0"}, "limit"), ({"after": "-2"}, "after"),
                         ({"from_seq": "1" * 30}, "from_seq"), ({"x": "1"}, "x"),
                         ({"lineage": "²"}, "lineage")):
        with pytest.raises(ApiError) as refused:
            history_query(query)
        assert refused.value.field == field


def test_the_document_describes_the_event_and_the_limits() -> None:
    doc = openapi_document(FORM, ["m"], max_events=7, max_body_bytes=100, max_points=9,
                           token_required=True, max_abs_value=1e9, labels=[0, 1])
    event = doc["components"]["schemas"]["Event"]
    assert event["required"] == ["salary", "commission", "age", "elevel", "car", "zipcode",
                                 "hvalue", "hyears", "loan"]
    assert event["properties"]["age"] == {"type": "integer", "minimum": -10**9,
                                          "maximum": 10**9}
    assert event["properties"]["label"]["enum"] == [0, 1, None]
    assert doc["components"]["schemas"]["Events"]["maxItems"] == 7
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    json.dumps(doc)


def test_a_short_token_is_refused_and_never_printed() -> None:
    model = {"name": "m", "pipeline": [{"linear_model.LogisticRegression": {}}]}
    with pytest.raises(ConfigError) as refused:
        settings_from_dict({"models": [model]}, env={"RIVERBED_WORKER__API_TOKEN": "abc"})
    assert refused.value.field == "worker.api_token" and "abc" not in str(refused.value)
    token = "x" * 20
    settings = settings_from_dict({"models": [model]}, env={"RIVERBED_WORKER__API_TOKEN": token})
    assert settings.worker.api_token == token and token not in repr(settings)


def _event(offset: int, epoch: int, body: Any) -> HistoryEvent:
    return HistoryEvent("m", epoch, 1000 + offset, body, offset)


def _learned(seq_from: int, seq_to: int) -> Learned:
    return Learned(seq_from, seq_to, {"t:0": seq_to}, (), f"f{seq_to}")


def test_the_summary_merges_learn_runs_and_records_rollbacks_and_drift() -> None:
    summary = HistorySummary("m", max_entries=100)
    events = [_event(0, 1, Claimed("w")), _event(1, 1, _learned(1, 10)),
              _event(2, 1, _learned(11, 20)), _event(3, 1, Annotated(15, "drift", "ADWIN")),
              _event(4, 1, _learned(21, 30)), _event(5, 1, _learned(21, 30)),  # duplicate
              _event(6, 2, Claimed("rollback")),
              _event(7, 2, SnapshotChunk("s", "rollback", 12, 0, 0, 1, b"", "", "", "f12")),
              _event(8, 2, Restored(12, "s", "bad data")), _event(9, 3, Claimed("w2")),
              _event(10, 3, _learned(13, 20)), _event(11, 1, _learned(31, 40))]  # stale
    for event in events:
        summary.apply(event)
    kinds = [(e["kind"], e["seq"], e["lineage"]) for e in summary.entries]
    assert kinds == [("claimed", 0, 0), ("learned", 20, 0), ("drift", 15, 0),
                     ("learned", 30, 0), ("ignored", 30, 0), ("claimed", 30, 0),
                     ("snapshot", 30, 0), ("rollback", 12, 1), ("claimed", 12, 1),
                     ("learned", 20, 1), ("ignored", 20, 1)]
    assert summary.entries[1]["batches"] == 2 and summary.entries[1]["examples"] == 20
    assert summary.entries[4]["why"] == "duplicate" and summary.entries[-1]["why"] == "stale epoch"
    v0, v1 = summary.version_list({1: {"Accuracy": 0.9}})
    assert (v0["to_seq"], v0["drifts"], v1["from_seq"], v1["to_seq"]) == (30, 1, 12, 20)
    assert v1["reason"] == "bad data" and v1["metrics"] == {"Accuracy": 0.9}
    page, cursor = summary.page(limit=4)
    assert [e["offset"] for e in page] == [0, 1, 3, 4] and cursor == 4
    rest, cursor = summary.page(after=4, limit=100)
    assert cursor is None and len(page) + len(rest) == len(summary.entries)
    assert all(e["lineage"] == 1 for e in summary.page(lineage=1)[0])
    assert all(e["seq"] >= 20 for e in summary.page(from_seq=20)[0])


def test_the_summary_is_bounded() -> None:
    summary = HistorySummary("m", max_entries=5)
    for i in range(20):
        summary.apply(_event(i, 1, Annotated(i, "drift", "x")))
    assert len(summary.entries) == 5 and summary.dropped == 15
    assert summary.entries[0]["offset"] == 15
