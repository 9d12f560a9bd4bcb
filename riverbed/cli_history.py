"""``riverbed history``, ``replay``, ``rollback`` and ``score``: inspect, rebuild, restore
and query model versions. User errors are raised (UsageError: exit 2; HistoryError,
BrokerError: exit 1; SnapshotIntegrityError: exit 2) for the CLI to print in one line."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import pickle
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from riverbed.streams.errors import HistoryError, UsageError
from riverbed.streams.history import Learned, SnapshotChunk
from riverbed.streams.history_log import SkippedRecord
from riverbed.streams.replay import (
    check_signed,
    example_check,
    iso_time,
    model_spec,
    read_model_history,
    replay,
)
from riverbed.streams.snapshots import SnapshotIntegrityError, snapshot_key

err = Console(stderr=True)


def history_rows(events: list[Any]) -> list[dict[str, Any]]:
    """One row per history event (snapshot chunks folded into one row per snapshot)."""
    rows = []
    for e in events:
        body, kind = e.body, type(e.body).__name__
        row: dict[str, Any] = {"offset": e.offset, "time": iso_time(e.time), "kind": kind,
                               "epoch": e.epoch}
        if isinstance(body, Learned):
            row.update(seq_from=body.seq_from, seq_to=body.seq_to, examples=len(body.examples),
                       fingerprint=body.fingerprint)
        elif isinstance(body, SnapshotChunk):
            if body.index != body.count - 1:
                continue
            row.update(seq=body.seq, snapshot_id=body.snapshot_id, purpose=body.purpose,
                       chunks=body.count, fingerprint=body.fingerprint)
        else:
            row.update({k: v for k, v in vars(body).items() if k not in ("probe", "spec")})
        rows.append(row)
    return rows


def _table_console() -> Console:
    """Stdout console; when piped (not a TTY) no width limit, so no column is cut."""
    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


def history_command(settings: Any, model: str, as_json: bool) -> None:
    """Print the history of ``model`` (HistoryError if it has none)."""
    model_spec(settings, model)
    skipped: list[SkippedRecord] = []
    events = asyncio.run(read_model_history(settings, model, key=snapshot_key(settings),
                                            skipped=skipped))
    check_signed(model, events, skipped)
    if not events:
        raise HistoryError(f"model {model!r} has no history on {settings.topics.history}")
    for record in skipped:
        err.print(f"skipped offset {record.offset}: {record.reason}", markup=False,
                  highlight=False)
    rows = history_rows(events)
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table(title=f"history of {model} ({len(events)} events)")
    for column in ("offset", "time", "kind", "epoch", "seq", "detail", "fingerprint"):
        table.add_column(column, no_wrap=not sys.stdout.isatty())
    for r in rows:
        seq = (f"{r['seq_from']}..{r['seq_to']}" if "seq_from" in r else str(r.get("seq", "")))
        detail = (f"{r['examples']} examples" if "examples" in r else
                  f"{r.get('purpose', '')} {r.get('chunks', '')} chunk(s)" if "chunks" in r else
                  " ".join(f"{k}={v}" for k, v in r.items()
                           if k not in ("offset", "time", "kind", "epoch", "seq")))
        table.add_row(str(r["offset"]), r["time"], r["kind"], str(r["epoch"]), seq, detail,
                      str(r.get("fingerprint", ""))[:16])
    _table_console().print(table)


def parse_time(text: str) -> int:
    """``--to-time``: an ISO 8601 time (UTC unless it carries an offset) as epoch ms."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--to-time {text!r} is not an ISO 8601 time "
                         "(e.g. 2026-12-01T09:30:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def check_target(to_seq: int | None, lineage: int | None) -> None:
    if to_seq is not None and to_seq < 0:
        raise UsageError(f"--to-seq must be >= 0, got {to_seq}")
    if lineage is not None and lineage < 0:
        raise UsageError(f"--lineage must be >= 0, got {lineage}")


def _warn(lines: list[str]) -> None:
    for line in lines:
        sys.stderr.write(f"warning: {line}\n")


def replay_command(
    settings: Any, model: str, to_seq: int | None, to_time: str | None, from_genesis: bool,
    verify: bool, output: Path | None, as_json: bool, lineage: int | None = None,
) -> int:
    """Rebuild ``model``; returns the exit code (1 on any fingerprint mismatch or a
    skipped record of the model under ``verify``). Raises UsageError / HistoryError /
    SnapshotIntegrityError for the CLI to report in one line."""
    model_spec(settings, model)
    check_target(to_seq, lineage)
    to_time_ms = parse_time(to_time) if to_time is not None else None
    key = snapshot_key(settings)
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("steps", total=None)

        def progress(seq: int, total: int) -> None:
            bar.update(task, completed=seq, total=total or None)

        try:
            result = asyncio.run(replay(settings, model, key, to_seq=to_seq,
                                        to_time_ms=to_time_ms, from_genesis=from_genesis,
                                        verify=verify, lineage=lineage, on_progress=progress))
        except SnapshotIntegrityError as exc:
            if as_json:
                sys.stdout.write(json.dumps({"ok": False, "error": str(exc)}) + "\n")
            raise
    probe = result.fold.created.probe if result.fold.created else ()
    from riverbed.streams.snapshots import fingerprint

    skipped = [f"history record of {model} at offset {s['offset']} skipped "
               f"({s['reason']})" for s in result.skipped]
    if result.refused_examples:
        skipped.append(f"{result.refused_examples} recorded example(s) this model cannot "
                       "learn (riverbed never writes them) skipped")
    failed = bool(result.mismatches) or (verify and bool(result.skipped
                                                         or result.refused_examples))
    summary = {"ok": not failed, "model": model, "seq": result.fold.seq,
               "lineage": result.fold.lineage, "started_from": result.started_from,
               "steps_replayed": result.steps, "fingerprints_verified": result.verified,
               "snapshots_checked": result.snapshots_checked,
               "mismatches": result.mismatches[:20],
               "skipped_records": result.skipped,
               "refused_examples": result.refused_examples,
               "warnings": result.warnings + skipped,
               "fingerprint": fingerprint(result.model.estimator, probe),
               "seconds": round(result.seconds, 3),
               "steps_per_s": round(result.steps / max(result.seconds, 1e-9), 1)}
    if output is not None:
        output.write_bytes(pickle.dumps(result.model.estimator))
        summary["output"] = str(output)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        for k, v in summary.items():
            sys.stdout.write(f"{k:>22}: {v}\n")
    if failed:
        problems = []
        if result.mismatches:
            problems.append(f"{len(result.mismatches)} fingerprint mismatch(es), first at "
                            f"seq {result.mismatches[0]['seq']}")
        if verify and result.skipped:
            offsets = ", ".join(str(s["offset"]) for s in result.skipped[:10])
            problems.append(f"{len(result.skipped)} history record(s) of {model} "
                            f"skipped (undecodable or unsigned) at offset(s) {offsets}")
        if verify and result.refused_examples:
            problems.append(f"{result.refused_examples} recorded example(s) {model} cannot "
                            "learn")
        sys.stderr.write(f"error: replay --verify of {model} failed: "
                         + "; ".join(problems) + "\n")
        return 1
    _warn(summary["warnings"])  # type: ignore[arg-type]
    return 0


def rollback_command(settings: Any, model: str, to_seq: int, reason: str, as_json: bool,
                     lineage: int | None = None) -> int:
    """Roll ``model`` back to ``to_seq`` (appends Claimed, a rollback snapshot, Restored)."""
    from riverbed.agents.learner import Learner, rollback
    from riverbed.streams.history_log import HistoryLog, SnapshotIndex
    from riverbed.streams.models import OnlineModel
    from riverbed.streams.output import BatchProducer

    spec = model_spec(settings, model)
    check_target(to_seq, lineage)
    if not reason.strip():
        raise UsageError("--reason must say why (it is recorded in the history)")
    key = snapshot_key(settings)

    async def run() -> dict[str, Any]:
        target = await replay(settings, model, key, to_seq=to_seq, lineage=lineage)
        _warn(target.warnings)
        producer = BatchProducer(settings.broker)
        await producer.start()
        try:
            h = settings.history
            live = OnlineModel(spec, name=model)
            learner = Learner(
                live,
                HistoryLog.of(settings, producer, key),
                SnapshotIndex(settings.broker, settings.topics.snapshots,
                              producer),
                key, snapshot_every_steps=h.snapshot_every_steps,
                snapshot_every_s=h.snapshot_every_s, id_window=h.id_window,
                probe_size=h.probe_size, owner="riverbed-rollback",
                check=example_check(settings, live))
            try:
                return await rollback(learner, target.model.estimator, to_seq, reason)
            except ValueError as exc:  # e.g. rolling "back" to a seq above the live one
                raise HistoryError(str(exc)) from None
        finally:
            await producer.stop()

    info = asyncio.run(run())
    sys.stdout.write((json.dumps(info) if as_json else
                      f"rolled {model} back to seq {to_seq} (lineage {info['lineage']}, "
                      f"fingerprint {info['fingerprint'][:16]})") + "\n")
    return 0


UNTRAINED = "model_seq 0: the model is untrained (it has learned nothing yet)"


def score_command(settings: Any, model: str, seq: int | None, lineage: int | None = None,
                  lines: Iterable[str] | None = None) -> int:
    """Predict JSON-lines events (stdin) with the model version (``lineage``, ``seq``).

    A line that cannot be scored (not JSON, not an object, a missing field, an invalid
    feature) is reported on stderr with its line number and skipped; exit 1 at the end."""
    from riverbed.schemas import load_schema
    from riverbed.streams.errors import ValidationError
    from riverbed.streams.features import FeatureExtractor

    model_spec(settings, model)
    check_target(seq, lineage)
    key = snapshot_key(settings)
    result = asyncio.run(replay(settings, model, key, to_seq=seq, lineage=lineage))
    _warn(result.warnings)
    spec = result.model.spec
    extractor = FeatureExtractor(load_schema(settings.event.schema, settings.base_dir),
                                 settings.event, spec, settings.limits)
    id_field, failed = settings.event.id_field, 0
    for number, line in enumerate(sys.stdin if lines is None else lines, start=1):
        if not line.strip():
            continue
        problem = None
        try:
            event = json.loads(line)
        except ValueError as exc:
            problem = f"not valid JSON ({getattr(exc, 'msg', exc)})"
        else:
            if not isinstance(event, dict):
                problem = f"expected a JSON object, got {_json_kind(event)}"
        if problem is None:
            try:
                x = extractor.extract(event)
            except KeyError as exc:
                problem = f"missing field {exc.args[0]!r}"
            except (ValidationError, TypeError, ValueError) as exc:
                problem = str(exc)
        if problem is not None:
            failed += 1
            sys.stderr.write(f"error: line {number}: {problem}\n")
            continue
        prediction, proba = result.model.predict(x)
        out = {"event_id": event.get(id_field), "model": model,
               "model_seq": result.fold.seq, "lineage": result.fold.lineage,
               "prediction": prediction,
               "probabilities": {str(k): float(v) for k, v in proba.items()}}
        if result.fold.seq == 0:
            out["warning"] = UNTRAINED
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 1 if failed else 0


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
