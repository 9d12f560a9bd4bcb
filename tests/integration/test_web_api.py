"""The worker's HTTP API against real workers on the broker: models, predictions that leave
the model as it was, the history with a drift and a rollback, health, and its security."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from riverbed.agents.worker import Worker
from riverbed.streams.config import Settings
from riverbed.streams.errors import ConfigError
from riverbed.streams.produce import produce
from tests.conftest import CONFIG, ROOT
from tests.helpers import provision, running_worker, until
from tests.integration.conftest import WebWorker

pytestmark = pytest.mark.integration

EVENT = {"event_id": "q1", "salary": 50000.0, "commission": 0.0, "age": 30, "elevel": 1,
         "car": 3, "zipcode": 2, "hvalue": 100000.0, "hyears": 10, "loan": 20000.0}
JSON = {"Content-Type": "application/json"}


@dataclasses.dataclass
class Client:
    session: aiohttp.ClientSession
    base: str
    worker: Worker

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with self.session.request(method, self.base + path, data=data,
                                        headers={**JSON, **(headers or {})}) as response:
            text = await response.text()
            return response.status, json.loads(text) if text.startswith(("{", "[")) else text


@dataclasses.dataclass
class Served:
    client: Client
    learned: int


async def _started(settings: Settings, events: int = 1500) -> AsyncIterator[Served]:
    await provision(settings)
    async with running_worker(settings) as worker, aiohttp.ClientSession() as session:
        report = await produce(settings, "agrawal", events, seed=5) if events else None
        learned = report.valid if report else 0
        await until(lambda: worker.learners[0].durable_seq >= learned, 60)
        yield Served(Client(session, f"http://127.0.0.1:{worker.app.conf.web_port}", worker),
                     learned)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    async for s in _started(settings):
        yield s


def _fingerprint(worker: Worker) -> str:
    return str(worker.describe_models()["agrawal-lr"]["fingerprint"])


async def test_models_lists_seq_lineage_epoch_role_and_metrics(served: Served) -> None:
    status, body = await served.client.call("GET", "/models")
    assert status == 200
    (model,) = body["models"]
    assert model["name"] == "agrawal-lr" and model["seq"] == served.learned
    assert model["lineage"] == 0 and model["epoch"] == 1 and model["role"] == "learner"
    assert 0.5 < model["metrics"]["Accuracy"] <= 1.0
    assert body["role"] == "active" and body["ready"] is True


async def test_predict_answers_like_the_live_model_and_leaves_it_unchanged(
        served: Served) -> None:
    c, worker = served.client, served.client.worker
    model = worker.models[0]
    before = _fingerprint(worker)
    status, one = await c.call("POST", "/models/agrawal-lr/predict", EVENT)
    assert status == 200, one
    x = {k: float(v) for k, v in EVENT.items() if isinstance(v, int | float)}
    expected, proba = model.predict(x)
    assert one["model_seq"] == served.learned and one["lineage"] == 0
    assert one["predictions"] == [{"event_id": "q1", "prediction": expected,
                                   "probabilities": {str(k): v for k, v in proba.items()}}]
    many = [{**EVENT, "event_id": f"e{i}", "age": 20 + i} for i in range(100)]
    status, hundred = await c.call("POST", "/models/agrawal-lr/predict", many)
    assert status == 200 and len(hundred["predictions"]) == 100
    assert [p["event_id"] for p in hundred["predictions"]] == [e["event_id"] for e in many]
    # the metadata may be left out: an id is made up, the key and time filled in
    bare = {k: v for k, v in EVENT.items() if k != "event_id"}
    status, made = await c.call("POST", "/models/agrawal-lr/predict", [bare])
    assert status == 200 and made["predictions"][0]["event_id"] == "api-0"
    assert _fingerprint(worker) == before
    assert model.seq == served.learned and worker.stats.learned["agrawal-lr"] == served.learned


async def test_predict_during_a_stream_never_interleaves_with_a_batch(served: Served) -> None:
    c, worker = served.client, served.client.worker
    stream = asyncio.ensure_future(produce(served.client.worker.settings, "agrawal", 6000,
                                           seed=6))
    answers: list[dict[str, Any]] = []
    while not stream.done() or len(answers) < 20:
        status, body = await c.call("POST", "/models/agrawal-lr/predict", [EVENT] * 50)
        assert status == 200, body
        answers.append(body)
    report = await stream
    total = served.learned + report.valid
    await until(lambda: worker.learners[0].durable_seq >= total, 60)
    seqs = [a["model_seq"] for a in answers]
    assert seqs == sorted(seqs) and seqs[-1] <= total
    # every answer of one request comes from one model state
    assert all(len({json.dumps(p["probabilities"]) for p in a["predictions"]}) == 1
               for a in answers)
    # the stream learned every event exactly once, as if nobody had asked
    assert worker.models[0].seq == total == worker.stats.learned["agrawal-lr"]


BAD = [
    ({**EVENT, "age": 2.5}, 422, "event.age", "decode_error"),
    ({**EVENT, "salary": "high"}, 422, "event.salary", "decode_error"),
    ({**EVENT, "colour": 1}, 422, "event.colour", "decode_error"),
    ({k: v for k, v in EVENT.items() if k != "loan"}, 422, "event.loan", "decode_error"),
    ({**EVENT, "salary": 1e300}, 422, "event.salary", "feature_out_of_range"),
    ({**EVENT, "event_id": ""}, 422, "event.event_id", "missing_event_id"),
    ({**EVENT, "event_id": "x" * 257}, 422, "event.event_id", "event_id_too_long"),
    ({**EVENT, "label": 7}, 422, "event.label", "invalid_label"),
    ([EVENT, {**EVENT, "hyears": None}], 422, "events[1].hyears", "decode_error"),
    ([], 400, "body", None),
    (3, 400, "body", None),
]


async def test_bad_events_are_refused_with_the_field_and_the_dead_letter_reason(
        served: Served) -> None:
    for body, status, field, reason in BAD:
        got, error = await served.client.call("POST", "/models/agrawal-lr/predict", body)
        assert (got, error["field"], error["reason"]) == (status, field, reason), error
    assert served.client.worker.models[0].seq == served.learned


async def test_malformed_requests_get_a_json_error_naming_the_field(served: Served) -> None:
    c = served.client
    for raw, field in ((b"{", "body"), (b"[" * 100_000, "body"), (b"\xff\xfe", "body"),
                       (b'{"salary": NaN}', "event.commission")):
        status, error = await c.call("POST", "/models/agrawal-lr/predict", raw=raw)
        assert status in (400, 422) and error["field"] == field, (raw[:10], error)
    status, error = await c.call("POST", "/models/agrawal-lr/predict", raw=b"{}",
                                 headers={"Content-Type": "text/plain"})
    assert (status, error["field"]) == (415, "Content-Type")
    status, error = await c.call("POST", "/models/nope/predict", EVENT)
    assert (status, error["field"]) == (404, "name")
    for query, field in (("limit=0", "limit"), ("from_seq=-1", "from_seq"),
                         ("after=x", "after"), ("limit=1&colour=2", "colour")):
        status, error = await c.call("GET", f"/models/agrawal-lr/history?{query}")
        assert (status, error["field"]) == (400, field), query
    status, error = await c.call("GET", "/static/../worker.py")
    assert status == 404
    status, error = await c.call("DELETE", "/models")
    assert status == 405 and "error" in error
    assert c.worker.stats.role == "active"  # and the worker is fine


async def test_body_and_list_limits(settings: Settings) -> None:
    settings = dataclasses.replace(settings, worker=dataclasses.replace(
        settings.worker, api_max_body_bytes=4000, api_max_events=3))
    async for s in _started(settings, events=0):
        c = s.client
        status, error = await c.call("POST", "/models/agrawal-lr/predict", [EVENT] * 4)
        assert (status, error["field"]) == (422, "body")  # over maxItems: schema-invalid
        status, error = await c.call("POST", "/models/agrawal-lr/predict", [EVENT] * 30)
        assert (status, error["field"]) == (413, "body")  # 5 KB > 4000 bytes
        chunked = (b"[" + b",".join([json.dumps(EVENT).encode()] * 40) + b"]")

        async def stream(body: bytes = chunked) -> AsyncIterator[bytes]:  # no Content-Length
            for i in range(0, len(body), 500):
                yield body[i:i + 500]
        async with c.session.post(c.base + "/models/agrawal-lr/predict", data=stream(),
                                  headers=JSON) as response:
            assert response.status == 413
        status, body = await c.call("POST", "/models/agrawal-lr/predict", [EVENT] * 3)
        assert status == 200 and body["untrained"] is True and body["model_seq"] == 0


async def test_a_token_guards_everything_but_the_page_and_the_probes(
        settings: Settings) -> None:
    token = "t0k3n-" + os.urandom(12).hex()
    settings = dataclasses.replace(settings, worker=dataclasses.replace(
        settings.worker, api_token=token))
    async for s in _started(settings, events=0):
        c = s.client
        for path in ("/models", "/openapi.json", "/metrics", "/riverbed/stats",
                     "/models/agrawal-lr/history"):
            status, error = await c.call("GET", path)
            assert status == 401 and error["field"] == "Authorization", path
            status, _ = await c.call("GET", path, headers={"Authorization": "Bearer nope"})
            assert status == 401, path
            status, _ = await c.call("GET", path, headers={"Authorization": f"Bearer {token}"})
            assert status == 200, path
        status, _ = await c.call("POST", "/models/agrawal-lr/predict", EVENT)
        assert status == 401
        for path in ("/", "/healthz", "/readyz", "/static/app.js"):
            status, _ = await c.call("GET", path)
            assert status == 200, path
        assert token not in repr(settings)


def test_a_worker_on_another_address_refuses_to_start_without_a_token(
        settings: Settings, broker: Any) -> None:
    exposed = dataclasses.replace(settings, worker=dataclasses.replace(
        settings.worker, web_host="0.0.0.0"))
    with pytest.raises(ConfigError) as refused:
        Worker(exposed)
    assert refused.value.field == "worker.api_token"
    env = {**os.environ, "RIVERBED_BROKER__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
           "RIVERBED_WORKER__WEB_HOST": "0.0.0.0"}
    env.pop("RIVERBED_WORKER__API_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "riverbed.cli", "worker", "-c",
                           str(CONFIG)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "RIVERBED_WORKER__API_TOKEN" in done.stderr
    short = {**env, "RIVERBED_WORKER__API_TOKEN": "short"}
    done = subprocess.run([sys.executable, "-m", "riverbed.cli", "worker", "-c",
                           str(CONFIG)], env=short, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "at least 16 characters" in done.stderr
    assert "short" not in done.stderr.replace("characters", "")


def test_history_shows_versions_snapshots_the_rollback_and_the_drift(
        web_worker: WebWorker) -> None:
    page = web_worker.get("/models/agrawal-lr/history?limit=1000")
    assert page["complete"] is True and page["next_after"] is None
    kinds = [e["kind"] for e in page["entries"]]
    assert {"created", "claimed", "learned", "snapshot", "drift", "rollback"} <= set(kinds)
    (rollback,) = [e for e in page["entries"] if e["kind"] == "rollback"]
    assert rollback["to_seq"] == 3000 and rollback["lineage"] == 1
    assert rollback["reason"] == "drifted: back to before the change"
    drifts = [e for e in page["entries"] if e["kind"] == "drift" and e["lineage"] == 0]
    assert drifts and all(4000 <= d["seq"] <= 8000 for d in drifts)  # after the change
    v0, v1 = page["versions"]
    assert (v0["lineage"], v0["from_seq"], v1["lineage"], v1["from_seq"]) == (0, 0, 1, 3000)
    assert v0["drifts"] >= 1 and v1["to_seq"] == 6000 and v1["reason"] == rollback["reason"]
    assert 0.5 < v1["metrics"]["Accuracy"] <= 1.0  # measured over lineage 1 only
    # learn batches are merged into runs: the page is short
    assert len(kinds) < 60
    # paging: limit + the cursor give the same entries, in order, without repeats
    pages, after = [], -1
    while True:
        got = web_worker.get(f"/models/agrawal-lr/history?limit=3&after={after}")
        pages += got["entries"]
        if got["next_after"] is None:
            break
        after = got["next_after"]
    assert [e["offset"] for e in pages] == [e["offset"] for e in page["entries"]]
    later = web_worker.get("/models/agrawal-lr/history?from_seq=5000&lineage=1")
    assert later["entries"] and all(e["seq"] >= 5000 and e["lineage"] == 1
                                    for e in later["entries"])
    series = web_worker.get("/models/agrawal-lr/metrics")["points"]
    assert {p["lineage"] for p in series} == {0, 1}
    assert [p["time"] for p in series] == sorted(p["time"] for p in series)


def test_healthz_and_readyz(web_worker: WebWorker) -> None:
    assert web_worker.get("/healthz") == {"alive": True}
    ready = web_worker.get("/readyz")
    assert ready["ready"] is True and ready["checks"]["broker_connected"] is True
    assert ready["checks"]["role"] == "active"

