"""Fuzz the worker's HTTP API from its own OpenAPI document (schemathesis): valid and
invalid requests for every operation, bounded in count. Nothing may answer 5xx, every
answer must match the document, the worker stays alive, and predictions leave the model
exactly as it was (its fingerprint)."""

from __future__ import annotations

import collections
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import pid_alive
from tests.integration.conftest import WebWorker

pytestmark = pytest.mark.integration

#: Examples per operation and generation mode (positive, negative); simple operations
#: run out of distinct inputs sooner: ~ 200-300 requests in all, well under a minute.
EXAMPLES = 40


def test_fuzz_the_api_from_its_openapi_document(web_worker: WebWorker) -> None:
    before = web_worker.get("/riverbed/models")["agrawal-lr"]
    document = web_worker.get("/openapi.json")
    schema = schemathesis.openapi.from_dict(document)
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    session = requests.Session()
    began = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err raises here
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def call(case: schemathesis.Case) -> None:
                response = case.call(base_url=web_worker.base, session=session, timeout=30)
                statuses[response.status_code] += 1
                try:
                    case.validate_response(response)
                except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported below
                    failures.append(f"{case.operation.label}: {exc}"[:600])
            try:
                call()
            except Unsatisfiable:  # nothing to make invalid (an operation without input)
                assert mode == GenerationMode.NEGATIVE, operation.label
    seconds = time.monotonic() - began
    total = sum(statuses.values())
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    print(f"\nfuzz: {total} requests in {seconds:.1f}s, statuses {dict(sorted(statuses.items()))}, "
          f"5xx: {server_errors}")
    assert total >= 100 and server_errors == 0, statuses
    assert not failures, "\n".join(failures[:10])
    assert pid_alive(web_worker.child.process.pid)
    assert web_worker.get("/healthz") == {"alive": True}
    after = web_worker.get("/riverbed/models")["agrawal-lr"]
    assert (after["fingerprint"], after["seq"]) == (before["fingerprint"], before["seq"])
    assert statuses[200] > 0 and any(400 <= code < 500 for code in statuses)
