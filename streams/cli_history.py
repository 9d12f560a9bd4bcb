"""``riverbed history`` and ``riverbed replay``: inspect and rebuild model versions."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import pickle
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from streams.history import Learned, SnapshotChunk
from streams.replay import read_model_history, replay
from streams.snapshots import SnapshotIntegrityError, snapshot_key

err = Console(stderr=True)


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def history_rows(events: list[Any]) -> list[dict[str, Any]]:
    """One row per history event (snapshot chunks folded into one row per snapshot)."""
    rows = []
    for e in events:
        body, kind = e.body, type(e.body).__name__
        row: dict[str, Any] = {"offset": e.offset, "time": _time(e.time), "kind": kind,
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


def history_command(settings: Any, model: str, as_json: bool) -> None:
    """Print the history of ``model``."""
    events = asyncio.run(read_model_history(settings, model))
    rows = history_rows(events)
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table(title=f"history of {model} ({len(events)} events)")
    for column in ("offset", "time", "kind", "epoch", "seq", "detail", "fingerprint"):
        table.add_column(column)
    for r in rows:
        seq = (f"{r['seq_from']}..{r['seq_to']}" if "seq_from" in r else str(r.get("seq", "")))
        detail = (f"{r['examples']} examples" if "examples" in r else
                  f"{r.get('purpose', '')} {r.get('chunks', '')} chunk(s)" if "chunks" in r else
                  " ".join(f"{k}={v}" for k, v in r.items()
                           if k not in ("offset", "time", "kind", "epoch", "seq")))
        table.add_row(str(r["offset"]), r["time"], r["kind"], str(r["epoch"]), seq, detail,
                      str(r.get("fingerprint", ""))[:16])
    Console().print(table)


def replay_command(
    settings: Any, model: str, to_seq: int | None, to_time: str | None, from_genesis: bool,
    verify: bool, output: Path | None, as_json: bool,
) -> int:
    """Rebuild ``model``; returns the exit code (1 on any fingerprint mismatch)."""
    to_time_ms = int(dt.datetime.fromisoformat(to_time).timestamp() * 1000) if to_time else None
    key = snapshot_key(settings)
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("steps", total=None)

        def progress(seq: int, total: int) -> None:
            bar.update(task, completed=seq, total=total or None)

        try:
            result = asyncio.run(replay(settings, model, key, to_seq=to_seq,
                                        to_time_ms=to_time_ms, from_genesis=from_genesis,
                                        verify=verify, on_progress=progress))
        except SnapshotIntegrityError as exc:
            err.print(f"[red]integrity error:[/red] {exc}")
            if as_json:
                sys.stdout.write(json.dumps({"ok": False, "error": str(exc)}) + "\n")
            return 2
    probe = result.fold.created.probe if result.fold.created else ()
    from streams.snapshots import fingerprint

    summary = {"ok": not result.mismatches, "model": model, "seq": result.fold.seq,
               "lineage": result.fold.lineage, "started_from": result.started_from,
               "steps_replayed": result.steps, "fingerprints_verified": result.verified,
               "snapshots_checked": result.snapshots_checked,
               "mismatches": result.mismatches[:20],
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
    return 0 if summary["ok"] else 1


def rollback_command(settings: Any, model: str, to_seq: int, reason: str, as_json: bool) -> int:
    """Roll ``model`` back to ``to_seq`` (appends Claimed, a rollback snapshot, Restored)."""
    from agents.learner import Learner, rollback
    from streams.history_log import HistoryLog, SnapshotIndex
    from streams.models import OnlineModel
    from streams.output import BatchProducer

    key = snapshot_key(settings)
    spec = next((m for m in settings.models if m.name == model), None)
    if spec is None:
        err.print(f"[red]error:[/red] model {model!r} is not in the config")
        return 2

    async def run() -> dict[str, Any]:
        target = await replay(settings, model, key, to_seq=to_seq)
        if target.fold.seq != to_seq:
            raise ValueError(f"history of {model} only reaches seq {target.fold.seq}")
        producer = BatchProducer(settings.broker.bootstrap_servers)
        await producer.start()
        try:
            h = settings.history
            learner = Learner(
                OnlineModel(spec),
                HistoryLog(settings.broker.bootstrap_servers, settings.topics.history, producer),
                SnapshotIndex(settings.broker.bootstrap_servers, settings.topics.snapshots,
                              producer),
                key, snapshot_every_steps=h.snapshot_every_steps,
                snapshot_every_s=h.snapshot_every_s, id_window=h.id_window,
                probe_size=h.probe_size, owner="riverbed-rollback")
            return await rollback(learner, target.model.estimator, to_seq, reason)
        finally:
            await producer.stop()

    try:
        info = asyncio.run(run())
    except (ValueError, SnapshotIntegrityError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1
    sys.stdout.write((json.dumps(info) if as_json else
                      f"rolled {model} back to seq {to_seq} (lineage {info['lineage']}, "
                      f"fingerprint {info['fingerprint'][:16]})") + "\n")
    return 0


def score_command(settings: Any, model: str, seq: int | None) -> int:
    """Predict JSON-lines events from stdin with the model version at ``seq``."""
    from schemas import load_schema
    from streams.errors import ValidationError
    from streams.features import FeatureExtractor

    key = snapshot_key(settings)
    result = asyncio.run(replay(settings, model, key, to_seq=seq))
    if seq is not None and result.fold.seq != seq:
        err.print(f"[red]error:[/red] history of {model} only reaches seq {result.fold.seq}")
        return 1
    spec = result.model.spec
    extractor = FeatureExtractor(load_schema(settings.event.schema, settings.base_dir),
                                 settings.event, spec, settings.limits)
    for line in sys.stdin:
        if not line.strip():
            continue
        event = json.loads(line)
        try:
            x = extractor.extract(event)
        except (ValidationError, KeyError) as exc:
            sys.stdout.write(json.dumps({"event_id": event.get(settings.event.id_field),
                                         "error": str(exc)}) + "\n")
            continue
        prediction, proba = result.model.predict(x)
        sys.stdout.write(json.dumps({"event_id": event.get(settings.event.id_field),
                                     "model": model, "model_seq": result.fold.seq,
                                     "prediction": prediction, "probabilities": proba}) + "\n")
    return 0
