"""Rebuild any past version of a model from its history, verifying fingerprints on the way.

``replay`` folds the history of one model into a fresh River model, from genesis or from
the newest verified snapshot at or before the target, up to ``to_seq`` / ``to_time``.
With ``verify``, every fingerprint recorded in a ``Learned`` batch or a snapshot is
recomputed and compared, and every snapshot passed is integrity-checked (HMAC) and its
own fingerprint compared: a mismatch is reported, a tampered snapshot raises
:class:`~streams.snapshots.SnapshotIntegrityError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from streams.config import Settings
from streams.history import (
    HistoryEvent,
    HistoryFold,
    Learn,
    Learned,
    Load,
    SnapshotChunk,
)
from streams.history_log import HistoryLog, SnapshotIndex
from streams.models import OnlineModel
from streams.snapshots import fingerprint, load_snapshot, verify_snapshot


def apply_effects(model: OnlineModel, effects: Sequence[Any], key: bytes) -> None:
    """Apply fold effects to a live estimator (learn examples, load snapshots).

    The cyclic GC is paused meanwhile: a replay holds the decoded history (millions of
    small dicts) in memory, and full collections over it cost more than the learning
    (bench/replay.py). Reference counting still frees everything as usual.
    """
    with gc_paused():
        for effect in effects:
            if isinstance(effect, Learn):
                learn = model.estimator.learn_one  # type: ignore[attr-defined]
                for example in effect.examples:
                    learn(dict(example.x), example.y)
            elif isinstance(effect, Load):
                model.estimator, _ = load_snapshot(effect.snapshot, key)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector inside the block (restored after)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclasses.dataclass
class ReplayResult:
    """A rebuilt model and what replay checked."""

    model: OnlineModel
    fold: HistoryFold
    steps: int = 0
    verified: int = 0
    mismatches: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    snapshots_checked: int = 0
    started_from: str = "genesis"
    seconds: float = 0.0


async def read_model_history(settings: Settings, model: str, start: int = 0) -> list[HistoryEvent]:
    """Every history event of ``model`` from offset ``start`` to the high-water mark."""
    log = HistoryLog(settings.broker.bootstrap_servers, settings.topics.history, None)  # type: ignore[arg-type]
    return [e async for e in log.read(start, None) if e.model == model]


async def replay(
    settings: Settings, model_name: str, key: bytes, *, to_seq: int | None = None,
    to_time_ms: int | None = None, from_genesis: bool = False, verify: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Rebuild ``model_name`` as of ``to_seq``/``to_time_ms`` (default: latest)."""
    spec = next((m for m in settings.models if m.name == model_name), None)
    if spec is None:
        raise KeyError(f"model {model_name!r} is not in the config")
    began = time.perf_counter()
    result = ReplayResult(OnlineModel(spec), HistoryFold(model_name, settings.history.id_window))
    events = await read_model_history(settings, model_name)
    start = 0
    if not from_genesis:
        start = _start_from_snapshot(result, events, key, to_seq, verify)
    total = events[-1].body.seq_to if events and isinstance(events[-1].body, Learned) else 0
    for event in events[start:]:
        if to_time_ms is not None and event.time > to_time_ms:
            break
        if isinstance(event.body, Learned) and to_seq is not None and event.body.seq_from > to_seq:
            if event.epoch == result.fold.epoch and event.body.seq_from == result.fold.seq + 1:
                break
        effect = result.fold.apply(event)
        _apply(result, event, effect, key, to_seq)
        if verify:
            _verify(result, event, key)
        if on_progress and isinstance(event.body, Learned):
            on_progress(result.fold.seq, total)
        if to_seq is not None and result.fold.seq >= to_seq:
            break
    result.model.seq, result.model.lineage = result.fold.seq, result.fold.lineage
    result.seconds = time.perf_counter() - began
    return result


def _start_from_snapshot(result: ReplayResult, events: list[HistoryEvent], key: bytes,
                         to_seq: int | None, verify: bool) -> int:
    """Find the newest checkpoint snapshot at or before ``to_seq`` by folding bookkeeping
    only (no learning), load it, and return the index of the event after it. With
    ``verify``, every snapshot on the way is integrity-checked too."""
    probe = HistoryFold(result.fold.model)
    best: tuple[int, Any, dict[str, Any]] | None = None
    seen = 0
    for index, event in enumerate(events):
        probe.apply(event)
        if to_seq is not None and probe.seq > to_seq:
            break
        if len(probe.snapshots) > seen:
            seen = len(probe.snapshots)
            if verify:
                verify_snapshot(probe.snapshots[-1], key)
                result.snapshots_checked += 1
            best = (index, probe.snapshots[-1], probe.export_state())
            best[2]["created"] = probe.created
    if best is None:
        return 0
    index, snapshot, state = best
    result.model.estimator, fold_state = load_snapshot(snapshot, key)
    result.fold.import_state(fold_state)
    result.fold.created = state["created"]
    result.fold.epoch = state["epoch"]
    result.started_from = f"snapshot {snapshot.snapshot_id[:12]} at seq {snapshot.seq}"
    return index + 1


def _apply(result: ReplayResult, event: HistoryEvent, effect: Any, key: bytes,
           to_seq: int | None) -> None:
    if isinstance(effect, Learn) and to_seq is not None and isinstance(event.body, Learned):
        keep = max(0, to_seq - event.body.seq_from + 1)
        if keep < len(effect.examples):  # target inside this batch: learn only up to it
            effect = Learn(effect.examples[:keep])
            result.fold.seq = to_seq
            result.fold.fingerprint = None
    if effect is not None:
        apply_effects(result.model, [effect], key)
        if isinstance(effect, Learn):
            result.steps += len(effect.examples)


def _verify(result: ReplayResult, event: HistoryEvent, key: bytes) -> None:
    probe = result.fold.created.probe if result.fold.created else ()
    body = event.body
    if isinstance(body, Learned) and result.fold.fingerprint == body.fingerprint \
            and result.fold.seq == body.seq_to:
        _compare(result, body.seq_to, "Learned", body.fingerprint,
                 fingerprint(result.model.estimator, probe))
    elif isinstance(body, SnapshotChunk) and body.index == body.count - 1 \
            and result.fold.snapshots and result.fold.snapshots[-1].snapshot_id == body.snapshot_id:
        estimator, _ = load_snapshot(result.fold.snapshots[-1], key)  # integrity check
        result.snapshots_checked += 1
        _compare(result, body.seq, "Snapshot", body.fingerprint, fingerprint(estimator, probe))
        _compare(result, body.seq, "Snapshot vs replay", body.fingerprint,
                 fingerprint(result.model.estimator, probe))


def _compare(result: ReplayResult, seq: int, what: str, recorded: str, actual: str) -> None:
    result.verified += 1
    if recorded != actual:
        result.mismatches.append({"seq": seq, "what": what, "recorded": recorded,
                                  "replayed": actual})


async def snapshot_entries(settings: Settings, model: str) -> list[dict[str, Any]]:
    """The snapshot index entries of ``model``."""
    index = SnapshotIndex(settings.broker.bootstrap_servers, settings.topics.snapshots, None)  # type: ignore[arg-type]
    return await index.entries(model)
