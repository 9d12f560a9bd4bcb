"""A model's history as a short list of entries for people: what the API's history page and
the web page show. Pure: fed decoded history events in log order, no I/O.

The history itself is mostly ``Learned`` batches (one per micro-batch); consecutive applied
batches of one epoch and lineage merge into one ``learned`` entry, so the entries are few:
claims, learn runs, snapshots, rollbacks, drift and integrity annotations, writes the fold
ignored. The fold (``streams/history.py``, with the snapshot HMAC check) decides what
applies, so the entries say what the model's state went through, not merely what was
written. Memory is bounded: at most ``max_entries`` are kept, the oldest dropped first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from riverbed.streams.history import (
    Annotated,
    Claimed,
    Created,
    HistoryEvent,
    HistoryFold,
    Learned,
    Restored,
    Snapshot,
    SnapshotChunk,
)


class HistorySummary:
    """Entries and versions (one per lineage) of one model's history."""

    def __init__(self, model: str, max_entries: int,
                 verify: Callable[[Snapshot], bool] | None = None) -> None:
        self.model = model
        # id_window 1: the summary needs no dedup window (the learner keeps its own)
        self.fold = HistoryFold(model, id_window=1, verify=verify)
        self.entries: deque[dict[str, Any]] = deque(maxlen=max_entries)
        #: entries dropped to respect ``max_entries``
        self.dropped = 0
        #: one per lineage: {lineage, from_seq, to_seq, started, ended, epochs, drifts,
        #: snapshots, reason}
        self.versions: list[dict[str, Any]] = []

    def apply(self, event: HistoryEvent) -> None:
        """Fold one event of this model (others are ignored)."""
        if event.model != self.model:
            return
        fold = self.fold
        before = (fold.seq, fold.lineage, fold.counters.rejected_snapshots,
                  fold.counters.rejected_restores, fold.counters.stale_writes,
                  fold.counters.duplicate_writes, fold.counters.gap_writes)
        effect = fold.apply(event)
        fold.snapshots.clear()  # payloads: the summary keeps metadata only
        body = event.body
        base = {"offset": event.offset, "time": event.time, "epoch": event.epoch,
                "lineage": fold.lineage, "seq": fold.seq}
        if not self.versions:
            self._new_version(0, 0, event.time, None)
        version = self.versions[-1]
        if event.epoch not in version["epochs"] and isinstance(body, Claimed):
            version["epochs"].append(event.epoch)
        if isinstance(body, Learned):
            self._learned(event, body, base, before)
        elif isinstance(body, Created):
            self._add({**base, "kind": "created", "river_version": body.river_version,
                       "spec_hash": body.spec_hash})
        elif isinstance(body, Claimed):
            stale = fold.epoch != event.epoch
            self._add({**base, "kind": "claimed", "owner": body.owner, "stale": stale})
        elif isinstance(body, SnapshotChunk):
            if body.index == body.count - 1:
                accepted = fold.counters.rejected_snapshots == before[2]
                self._add({**base, "kind": "snapshot", "snapshot_id": body.snapshot_id,
                           "purpose": body.purpose, "snapshot_seq": body.seq,
                           "chunks": body.count, "fingerprint": body.fingerprint,
                           "accepted": accepted})
                if accepted and body.purpose == "checkpoint":
                    version["snapshots"] += 1
        elif isinstance(body, Restored):
            if effect is None:
                self._add({**base, "kind": "ignored", "why": "restore refused by the fold",
                           "to_seq": body.to_seq, "records": 1})
            else:
                version["ended"] = event.time
                self._new_version(fold.lineage, body.to_seq, event.time, body.reason,
                                  epoch=event.epoch)
                self._add({**base, "kind": "rollback", "from_seq": before[0],
                           "to_seq": body.to_seq, "reason": body.reason,
                           "snapshot_id": body.snapshot_id})
        elif isinstance(body, Annotated):
            kind = body.kind if body.kind in ("drift", "integrity") else "annotation"
            self._add({**base, "kind": kind, "seq": body.seq if kind == "drift" else fold.seq,
                       "note": body.note, "annotation": body.kind})
            if kind == "drift":
                version["drifts"] += 1
        self.versions[-1]["to_seq"] = fold.seq

    def _new_version(self, lineage: int, from_seq: int, time: int, reason: str | None,
                     epoch: int | None = None) -> None:
        self.versions.append({"lineage": lineage, "from_seq": from_seq, "to_seq": from_seq,
                              "started": time, "ended": None,
                              "epochs": [] if epoch is None else [epoch], "drifts": 0,
                              "snapshots": 0, "reason": reason})

    def _learned(self, event: HistoryEvent, body: Learned, base: dict[str, Any],
                 before: tuple[int, ...]) -> None:
        counters = self.fold.counters
        last = self.entries[-1] if self.entries else None
        ignored = (counters.stale_writes, counters.duplicate_writes,
                   counters.gap_writes) != before[4:7]
        if not ignored:  # applied (an empty batch carries offsets only)
            if (last is not None and last["kind"] == "learned" and last["epoch"] == event.epoch
                    and last["lineage"] == self.fold.lineage and last["seq"] == before[0]):
                last.update(seq=self.fold.seq, batches=last["batches"] + 1,
                            last_time=event.time, fingerprint=body.fingerprint,
                            examples=last["examples"] + body.seq_to - body.seq_from + 1)
                return
            self._add({**base, "kind": "learned", "seq_from": body.seq_from,
                       "batches": 1, "examples": body.seq_to - body.seq_from + 1,
                       "last_time": event.time, "fingerprint": body.fingerprint})
            return
        why = ("stale epoch" if counters.stale_writes != before[4] else
               "duplicate" if counters.duplicate_writes != before[5] else "gap")
        if (last is not None and last["kind"] == "ignored" and last.get("why") == why
                and last["epoch"] == event.epoch):
            last.update(records=last["records"] + 1, last_time=event.time)
            return
        self._add({**base, "kind": "ignored", "why": why, "records": 1,
                   "seq_from": body.seq_from, "seq_to": body.seq_to, "last_time": event.time})

    def _add(self, entry: dict[str, Any]) -> None:
        if len(self.entries) == self.entries.maxlen:
            self.dropped += 1
        self.entries.append(entry)

    def page(self, from_seq: int = 0, lineage: int | None = None, after: int = -1,
             limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """Entries in log order whose seq is >= ``from_seq`` (of ``lineage`` if given)
        and whose offset is > ``after``; at most ``limit``. Returns them and the cursor of
        the next page (the last offset returned), or None when nothing more matches."""
        chosen: list[dict[str, Any]] = []
        for entry in self.entries:
            if entry["offset"] <= after or entry["seq"] < from_seq:
                continue
            if lineage is not None and entry["lineage"] != lineage:
                continue
            if len(chosen) == limit:
                return chosen, chosen[-1]["offset"]
            chosen.append(dict(entry))
        return chosen, None

    def version_list(self, metrics: Mapping[int, Mapping[str, float]]) -> list[dict[str, Any]]:
        """The versions (lineages) with the metrics measured over each (``metrics``:
        lineage -> metric values of its last report)."""
        return [{**v, "epochs": list(v["epochs"]),
                 "metrics": dict(metrics.get(v["lineage"], {}))} for v in self.versions]
