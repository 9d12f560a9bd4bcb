"""History commands tell the truth (issue "riverbed 6", items 2-5 and 7): replay by time
with snapshots, lineages after a rollback, refusals, snapshot counts, refused snapshots,
skipped records, score's output, tail of the metrics topic, history when piped."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
from typing import Any

import pytest

from riverbed.schemas import load_schema
from riverbed.streams.codec import AvroCodec
from riverbed.streams.config import Settings
from riverbed.streams.datasets import events
from riverbed.streams.history import HistoryEvent, Restored, SnapshotChunk, fold
from riverbed.streams.replay import read_model_history, replay
from riverbed.streams.snapshots import SnapshotIntegrityError
from riverbed.streams.tail import collect
from tests.conftest import unique_settings
from tests.integration._histories import Built, build_history, cli, copy_history, last_json

pytestmark = pytest.mark.integration
KEY = os.urandom(32)


@pytest.fixture(scope="module")
def built(example_settings: Settings, broker: Any) -> Built:
    """Lineage 0 learns 900 then 600 events (a snapshot every 300 steps), is rolled back
    to seq 500, and lineage 1 learns 400 more."""
    return asyncio.run(build_history(unique_settings(example_settings,
                                                     broker.bootstrap_servers), KEY))


async def test_to_time_matches_genesis_with_several_snapshots_and_a_rollback(
        built: Built) -> None:
    history = await read_model_history(built.settings, built.name)
    state, _ = fold(built.name, history)
    assert len(state.snapshots) >= 4  # several checkpoints, in both lineages
    assert any(isinstance(e.body, Restored) for e in history)
    for mark in ("p0", "p1", "rollback", "after"):
        when, seq, lineage = built.marks[mark]
        fast = await replay(built.settings, built.name, KEY, to_time_ms=when)
        slow = await replay(built.settings, built.name, KEY, to_time_ms=when,
                            from_genesis=True)
        assert (fast.fold.seq, fast.fold.lineage) == (seq, lineage), mark
        assert (slow.fold.seq, slow.fold.lineage) == (seq, lineage), mark
        assert fast.started_from.startswith("snapshot"), mark  # the snapshot path was taken
        probe = slow.fold.created.probe  # type: ignore[union-attr]
        from riverbed.streams.snapshots import fingerprint
        assert fingerprint(fast.model.estimator, probe) == fingerprint(
            slow.model.estimator, probe), mark
    # before the model existed: refused, one line, exit 1 (used to answer the newest snapshot)
    before = built.marks["before"][0]
    iso = dt.datetime.fromtimestamp(before / 1000, dt.UTC).isoformat()
    done = cli(built.settings, KEY, "replay", built.name, "--to-time", iso, "--json")
    assert done.returncode == 1 and "did not exist yet" in done.stderr
    # through the CLI, a time between the phases answers the phase's seq
    when, seq, _ = built.marks["p0"]
    iso = dt.datetime.fromtimestamp(when / 1000, dt.UTC).isoformat(timespec="milliseconds")
    summary = last_json(cli(built.settings, KEY, "replay", built.name, "--to-time", iso,
                            "--json"))
    assert summary["seq"] == seq and summary["lineage"] == 0


async def test_lineages_after_a_rollback(built: Built) -> None:
    _, p1_seq, _ = built.marks["p1"]  # lineage 0 reached this before the rollback
    _, top, _ = built.marks["after"]  # lineage 1 ends here
    # default: the live lineage (1); lineage 0's later versions need --lineage 0
    live = await replay(built.settings, built.name, KEY, to_seq=top - 50)
    assert (live.fold.seq, live.fold.lineage) == (top - 50, 1)
    done = cli(built.settings, KEY, "replay", built.name, "--to-seq", str(p1_seq), "--json")
    assert done.returncode == 1 and "only reaches seq" in done.stderr
    old = last_json(cli(built.settings, KEY, "replay", built.name, "--to-seq", str(p1_seq),
                        "--lineage", "0", "--json", "--verify"))
    assert (old["seq"], old["lineage"], old["ok"]) == (p1_seq, 0, True)
    genesis = await replay(built.settings, built.name, KEY, to_seq=p1_seq, lineage=0,
                           from_genesis=True)
    assert old["fingerprint"] == _fingerprint(genesis)
    # the same seq in both lineages: different models (lineage 1 learned other events)
    in_0 = await replay(built.settings, built.name, KEY, to_seq=top - 50, lineage=0)
    assert (in_0.fold.seq, in_0.fold.lineage) == (top - 50, 0)
    assert _fingerprint(in_0) != _fingerprint(live)
    # below the rollback point, lineage 1's version is lineage 0's
    shared = await replay(built.settings, built.name, KEY, to_seq=400, lineage=1)
    shared_0 = await replay(built.settings, built.name, KEY, to_seq=400, lineage=0,
                            from_genesis=True)
    assert _fingerprint(shared) == _fingerprint(shared_0)
    # score reaches lineage 0 too
    line = json.dumps(next(events("agrawal", 1, seed=3)))
    scored = cli(built.settings, KEY, "score", built.name, "--seq", str(p1_seq),
                 "--lineage", "0", stdin=line)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["lineage"] == 0
    assert json.loads(scored.stdout)["model_seq"] == p1_seq
    # refusals: beyond the history, negative, unknown lineage
    for args, code in ((["--to-seq", str(top + 1)], 1), (["--to-seq", "-4"], 2),
                       (["--lineage", "2"], 1), (["--lineage", "-1"], 2)):
        done = cli(built.settings, KEY, "replay", built.name, *args)
        assert done.returncode == code, (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and done.stdout == ""


async def test_verify_counts_every_snapshot_it_verified(built: Built) -> None:
    history = await read_model_history(built.settings, built.name)
    state, _ = fold(built.name, history)
    rollbacks = {e.body.snapshot_id for e in history if isinstance(e.body, Restored)}
    expected = len(state.snapshots) + len(rollbacks)
    assert len(state.snapshots) >= 4 and len(rollbacks) == 1
    for args in (["--from-genesis"], []):
        summary = last_json(cli(built.settings, KEY, "replay", built.name, "--verify",
                                "--json", *args))
        assert summary["ok"] and summary["snapshots_checked"] == expected, (args, summary)


async def test_a_refused_snapshot_is_skipped_unless_verifying(built: Built) -> None:
    history = await read_model_history(built.settings, built.name)
    state, _ = fold(built.name, history)
    newest = state.snapshots[-1].snapshot_id

    def flip(event: HistoryEvent) -> HistoryEvent:
        body = event.body
        if isinstance(body, SnapshotChunk) and body.snapshot_id == newest:
            data = bytearray(body.data)
            data[len(data) // 2] ^= 0x01
            return dataclasses.replace(event, body=dataclasses.replace(body, data=bytes(data)))
        return event

    tampered = await copy_history(built, ".tampered", change=flip)
    intact = await replay(built.settings, built.name, KEY)
    rebuilt = await replay(tampered, built.name, KEY)
    assert rebuilt.fold.seq == intact.fold.seq
    assert _fingerprint(rebuilt) == _fingerprint(intact)
    assert len(rebuilt.warnings) == 1 and newest[:12] in rebuilt.warnings[0]
    assert newest[:12] not in rebuilt.started_from
    summary = last_json(cli(tampered, KEY, "replay", built.name, "--json"))
    assert summary["ok"] and summary["warnings"]
    with pytest.raises(SnapshotIntegrityError):
        await replay(tampered, built.name, KEY, verify=True)
    done = cli(tampered, KEY, "replay", built.name, "--verify")
    assert done.returncode == 2 and newest in done.stderr
    assert len(done.stderr.splitlines()) == 1


async def test_undecodable_records_of_the_model_are_reported(built: Built) -> None:
    copied = len(await read_model_history(built.settings, built.name))
    garbage = await copy_history(built, ".garbage", extra=[
        (built.name.encode(), b"\x00not a history record"), (b"other-model", b"\x01junk")])
    plain = cli(garbage, KEY, "replay", built.name, "--json")
    summary = last_json(plain)
    assert plain.returncode == 0 and summary["ok"]
    assert [s["offset"] for s in summary["skipped_records"]] == [copied]  # not other-model's
    assert f"offset {copied}" in plain.stderr  # one warning line
    done = cli(garbage, KEY, "replay", built.name, "--verify", "--json")
    assert done.returncode == 1 and not last_json(done)["ok"]
    assert f"offset(s) {copied}" in done.stderr and len(done.stderr.splitlines()) == 1


async def test_score_output_matches_predictions_and_warns_when_untrained(built: Built) -> None:
    line = json.dumps(next(events("agrawal", 1, seed=4)))
    done = cli(built.settings, KEY, "score", built.name, stdin=line)
    assert done.returncode == 0 and done.stderr == ""
    scored = json.loads(done.stdout)
    records = await collect(built.settings, built.settings.topics.predictions, 4, 1)
    prediction = AvroCodec(load_schema("prediction")).decode(records[0].value)
    assert set(scored["probabilities"]) == set(prediction["probabilities"])  # "True"/"False"
    assert "warning" not in scored
    untrained = json.loads(cli(built.settings, KEY, "score", built.name, "--seq", "0",
                               stdin=line).stdout)
    assert untrained["model_seq"] == 0 and "untrained" in untrained["warning"]


async def test_tail_decodes_the_metrics_topic(built: Built) -> None:
    # one report at least: the worker sends one per second (a fast broker builds the
    # history in about a second); --max ends the tail, not the idle timeout
    done = cli(built.settings, KEY, "tail", built.settings.topics.metrics, "--max", "1",
               "--idle-timeout", "20")
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(reports) == 1 and all(r["model"] == built.name for r in reports)
    assert {"seq", "lineage", "metrics", "consumer_lag"} <= set(reports[0])


async def test_history_is_not_cut_when_piped(built: Built) -> None:
    done = cli(built.settings, KEY, "history", built.name)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    rows = [line for line in done.stdout.splitlines() if "Learned" in line]
    assert rows and all("examples" in row for row in rows)
    history = await read_model_history(built.settings, built.name)
    assert sum("Learned" in line for line in done.stdout.splitlines()) == sum(
        type(e.body).__name__ == "Learned" for e in history)
    assert "Restored" in done.stdout and "test rollback" in done.stdout


def _fingerprint(result: Any) -> str:
    from riverbed.streams.snapshots import fingerprint

    return fingerprint(result.model.estimator, result.fold.created.probe)
