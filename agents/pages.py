"""The worker's own JSON pages beside ``/metrics`` and ``/riverbed/stats``: what each model
is now. Read-only: serving a page never touches a model."""

from __future__ import annotations

from typing import Any

from riverbed.agents.inference import InferenceProcessor
from riverbed.agents.labels import LabelJoin
from riverbed.agents.learner import Learner
from riverbed.streams.snapshots import fingerprint


def describe_models(processor: InferenceProcessor, join: LabelJoin | None
                    ) -> dict[str, dict[str, Any]]:
    """Live seq, lineage, epoch, fingerprint and history position of every served model."""
    described = {}
    for slot in processor.slots:
        model = slot.model
        learner = slot.learner if isinstance(slot.learner, Learner) else None
        created = learner.fold.created if learner else None
        probe = created.probe if created else ()
        described[model.name] = {
            "seq": model.seq, "lineage": model.lineage,
            "durable_seq": learner.durable_seq if learner else None,
            "durable_offsets": dict(learner.durable_offsets) if learner else {},
            "pending": len(join.store.events) if join else 0,
            "pending_log": {"read_from": join.rebuilt_from, "records_read": join.records_read,
                            "low_water": join.low_water()} if join else None,
            "fold_counters": vars(learner.fold.counters) if learner else None,
            "epoch": learner.epoch if learner else None,
            "fingerprint": fingerprint(model.estimator, probe) if created else None,
            "skipped_replayed": learner.skipped_replayed if learner else 0,
            "skipped_duplicates": learner.skipped_duplicates if learner else 0,
        }
    return described


def register_pages(app: Any, processor: InferenceProcessor, join: LabelJoin | None) -> None:
    """Serve ``/riverbed/models`` on the worker's Faust web server."""

    @app.page("/riverbed/models")
    async def models_page(web: Any, request: Any) -> Any:
        return web.json(describe_models(processor, join))
