"""Model states for prediction replicas that catch up by loading, not re-learning
(``replica_catch_up = "state"``). Pure: no Kafka, no I/O.

A model's learner publishes its estimator on ``topics.replica_state`` every
``replica_state_every_steps`` learn steps (or ``replica_state_every_s``), after the
``Learned`` records up to that step are acknowledged in the history. A state is the
pickled estimator alone -- no dedup window, unlike a checkpoint snapshot -- signed with
HMAC-SHA256 under the snapshot key over its place (model, epoch, seq, lineage,
fingerprint, id) and its bytes, cut into records under 900 KiB.

A replica loads a state only after checking, in this order, that it verifies (nothing is
unpickled before) and that the history it folded holds a ``Learned`` record ending at
that seq, in that epoch and lineage, with that fingerprint (``agents/replica.py``): a state
the history does not vouch for -- a fenced learner's, a forged one -- is never served.
The topic is a cache with a short retention; the history stays the record of what was
learned, and a replica that starts restores from it.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import uuid
from collections import OrderedDict
from collections.abc import Collection
from typing import Any

from riverbed.streams.errors import DecodeError
from riverbed.streams.snapshots import CHUNK_BYTES, SnapshotIntegrityError, sign, signed_by

__all__ = ["ModelState", "StateAssembler", "encode_state", "load_state", "verify_state"]

_PLACE = ("model", "state_id", "epoch", "seq", "lineage", "fingerprint", "time_ms")


@dataclasses.dataclass(frozen=True)
class ModelState:
    """One published model state (payload verified only by :func:`load_state`)."""

    model: str
    state_id: str
    epoch: int
    seq: int
    lineage: int
    fingerprint: str
    #: when the learner published it (ms since the epoch)
    time_ms: int
    payload: bytes
    hmac: str


def _signed_bytes(place: dict[str, Any], payload: bytes) -> bytes:
    return b"riverbed-replica-state\n" + json.dumps(place, sort_keys=True).encode() + payload


def encode_state(estimator: Any, key: bytes, *, model: str, epoch: int, seq: int,
                 lineage: int, fingerprint: str, time_ms: int) -> list[bytes]:
    """The record values of one state of ``estimator``, in order.

    >>> from river import linear_model
    >>> values = encode_state(linear_model.LogisticRegression(), b"k" * 32, model="m",
    ...                       epoch=2, seq=10, lineage=0, fingerprint="f", time_ms=1)
    >>> assembler = StateAssembler()
    >>> state = [assembler.add(v) for v in values][-1]
    >>> (state.model, state.seq), type(load_state(state, b"k" * 32)).__name__
    (('m', 10), 'LogisticRegression')
    """
    payload = pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)
    place = {"model": model, "state_id": uuid.uuid4().hex, "epoch": epoch, "seq": seq,
             "lineage": lineage, "fingerprint": fingerprint, "time_ms": time_ms}
    signature = sign(_signed_bytes(place, payload), key)
    parts = [payload[i:i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)] or [b""]
    return [json.dumps({**place, "hmac": signature, "index": i, "count": len(parts)}).encode()
            + b"\n" + part for i, part in enumerate(parts)]


class StateAssembler:
    """Collects the records of states; per model, the parts of the last few states begun
    (two learners' records may interleave while one of them is being fenced)."""

    #: unfinished states kept per model (the oldest begun is dropped first)
    UNFINISHED = 4

    def __init__(self, models: Collection[str] | None = None) -> None:
        #: the models whose states are collected (None: any); a record of another model is
        #: skipped before anything is kept (made-up names would grow memory without bound)
        self.models = None if models is None else frozenset(models)
        self._parts: dict[str, OrderedDict[str, dict[int, bytes]]] = {}

    def add(self, value: bytes) -> ModelState | None:
        """Add one record value; the state once its last part is in, else None.
        DecodeError if ``value`` is not a state record."""
        try:
            head, _, data = value.partition(b"\n")
            meta = json.loads(head)
            place = {k: meta[k] for k in _PLACE}
            index, count, signature = int(meta["index"]), int(meta["count"]), meta["hmac"]
            if not (isinstance(place["model"], str) and isinstance(signature, str)
                    and 0 <= index < count):
                raise ValueError("model, signature or part number malformed")
            for field in ("epoch", "seq", "lineage", "time_ms"):
                place[field] = int(place[field])
        except Exception as exc:  # any bytes: the replica skips and counts them
            raise DecodeError(f"not a replica state record: {type(exc).__name__}") from exc
        model, state_id = place["model"], str(place["state_id"])
        if self.models is not None and model not in self.models:
            return None
        begun = self._parts.setdefault(model, OrderedDict())
        parts = begun.setdefault(state_id, {})
        parts[index] = data
        if len(begun) > self.UNFINISHED:
            begun.popitem(last=False)
        if len(parts) < count or sorted(parts) != list(range(count)):
            return None
        begun.pop(state_id, None)
        return ModelState(model, state_id, place["epoch"], place["seq"], place["lineage"],
                          str(place["fingerprint"]), place["time_ms"],
                          b"".join(parts[i] for i in range(count)), signature)


def verify_state(state: ModelState, key: bytes) -> None:
    """SnapshotIntegrityError unless the bytes and the place are as ``key`` signed them."""
    place = {k: getattr(state, k) for k in _PLACE}
    if not signed_by(_signed_bytes(place, state.payload), key, state.hmac):
        raise SnapshotIntegrityError(f"replica state {state.state_id} of {state.model}: HMAC "
                                     "mismatch (tampered, moved, or signed with another key)")


def load_state(state: ModelState, key: bytes) -> Any:
    """Verify, then unpickle the estimator; SnapshotIntegrityError if the bytes or the
    place were changed or signed with another key (nothing is unpickled then)."""
    verify_state(state, key)
    return pickle.loads(state.payload)  # noqa: S301 - verified above
