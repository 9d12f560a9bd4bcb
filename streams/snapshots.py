"""Signed, chunked model snapshots and model fingerprints.

A snapshot payload is ``pickle({"model": estimator, "fold": fold_state})``, signed with
HMAC-SHA256 under the configured key and cut into chunks under 900 KiB. The HMAC (and
the SHA-256) are checked *before* anything is unpickled: a tampered byte raises
:class:`SnapshotIntegrityError`. Pickle bytes of River models are not deterministic, so
identity of model state is checked with the **fingerprint**: SHA-256 of the model's
predictions on the probe set, rounded to 1e-12.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import pickle
import secrets
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from riverbed.streams.errors import RiverbedError
from riverbed.streams.history import Snapshot, SnapshotChunk

CHUNK_BYTES = 900 * 1024


class SnapshotIntegrityError(RiverbedError):
    """A snapshot's bytes do not match its signature or digest; nothing was unpickled."""


def fingerprint(estimator: Any, probe: Sequence[Mapping[str, float]]) -> str:
    """SHA-256 of the model's predictions on ``probe`` (rounded to 1e-12)."""
    rows = []
    for x in probe:
        if hasattr(estimator, "predict_proba_one"):
            proba = estimator.predict_proba_one(dict(x))
            rows.append(sorted((str(k), _round(v)) for k, v in proba.items()))
        else:
            rows.append(_round(estimator.predict_one(dict(x))))
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else round(value, 12)
    return value


def sign(payload: bytes, key: bytes) -> str:
    """HMAC-SHA256 of ``payload`` (hex)."""
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def signed_by(payload: bytes, key: bytes, signature: object) -> bool:
    """True if ``signature`` is :func:`sign` of ``payload`` with ``key``. Any value read
    from a topic may be given: a non-string, or a string with non-ASCII characters (which
    ``hmac.compare_digest`` refuses with a TypeError), is simply a wrong signature."""
    return isinstance(signature, str) and hmac.compare_digest(
        sign(payload, key).encode(), signature.encode("utf-8", "surrogatepass"))


def _place(model: str, purpose: str, epoch: int, seq: int, lineage: int,
           snapshot_id: str) -> bytes:
    """Where a snapshot belongs, signed together with its payload: a snapshot re-appended
    elsewhere, or re-labelled with another model, epoch, seq or lineage, fails its HMAC."""
    return json.dumps([2, model, purpose, epoch, seq, lineage, snapshot_id]).encode() + b"\n"


def make_chunks(
    estimator: Any, fold_state: Mapping[str, Any], key: bytes, *, purpose: str, seq: int,
    lineage: int, model_fingerprint: str, model: str, epoch: int,
    snapshot_id: str | None = None,
) -> list[SnapshotChunk]:
    """Pickle, sign and chunk a snapshot of ``estimator`` with the fold bookkeeping. The
    HMAC covers the payload *and* its place: model, purpose, epoch, seq, lineage, id."""
    payload = pickle.dumps({"model": estimator, "fold": dict(fold_state)}, protocol=5)
    snapshot_id = snapshot_id or uuid.uuid4().hex
    place = _place(model, purpose, epoch, seq, lineage, snapshot_id)
    digest, signature = hashlib.sha256(payload).hexdigest(), sign(place + payload, key)
    parts = [payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)] or [b""]
    return [SnapshotChunk(snapshot_id, purpose, seq, lineage, i, len(parts), part, digest,
                          signature, model_fingerprint) for i, part in enumerate(parts)]


def verify_snapshot(snapshot: Snapshot, key: bytes) -> None:
    """Raise SnapshotIntegrityError unless digest and HMAC match for this snapshot at its
    place (model, purpose, epoch, seq, lineage, id); nothing is unpickled."""
    if hashlib.sha256(snapshot.payload).hexdigest() != snapshot.sha256:
        raise SnapshotIntegrityError(f"snapshot {snapshot.snapshot_id}: sha256 mismatch")
    place = _place(snapshot.model, snapshot.purpose, snapshot.epoch, snapshot.seq,
                   snapshot.lineage, snapshot.snapshot_id)
    if not signed_by(place + snapshot.payload, key, snapshot.hmac):
        raise SnapshotIntegrityError(
            f"snapshot {snapshot.snapshot_id}: HMAC mismatch (tampered, moved to another "
            "model/epoch/seq, or signed with another key)")


def snapshot_verifier(key: bytes, refused: list[tuple[Snapshot, str]] | None = None
                      ) -> Callable[[Snapshot], bool]:
    """A check for :class:`~streams.history.HistoryFold`: True if the snapshot verifies;
    a refused one is appended to ``refused`` with the reason (nothing is unpickled)."""
    def check(snapshot: Snapshot) -> bool:
        try:
            verify_snapshot(snapshot, key)
        except SnapshotIntegrityError as exc:
            if refused is not None:
                refused.append((snapshot, str(exc)))
            return False
        return True
    return check


def sign_index_entry(entry: Mapping[str, Any], model: str, key: bytes) -> dict[str, Any]:
    """``entry`` (a snapshot-index entry or epoch marker) with an ``hmac`` over its fields
    and the model: an entry cannot be forged or pointed at a re-appended copy."""
    body = {k: v for k, v in entry.items() if k != "hmac"}
    return {**body, "hmac": sign(_index_text(body, model), key)}


def _index_text(body: Mapping[str, Any], model: str) -> bytes:
    return json.dumps([model, body], sort_keys=True).encode()


def index_entry_ok(entry: Mapping[str, Any], model: str, key: bytes) -> bool:
    """True if ``entry`` carries a valid :func:`sign_index_entry` HMAC for ``model``."""
    body = {k: v for k, v in entry.items() if k != "hmac"}
    return signed_by(_index_text(body, model), key, entry.get("hmac"))


def load_snapshot(snapshot: Snapshot, key: bytes) -> tuple[Any, dict[str, Any]]:
    """Verify, then unpickle: ``(estimator, fold_state)``; SnapshotIntegrityError if tampered."""
    verify_snapshot(snapshot, key)
    data = pickle.loads(snapshot.payload)  # noqa: S301 - verified above
    return data["model"], data["fold"]


def load_or_create_key(path: Path) -> bytes:
    """The snapshot key stored at ``path`` (created, mode 0600, if missing). Safe when
    several processes start at once on a fresh machine: the key is written to a private
    temporary file and linked into place, so a reader never sees a half-written key and
    every process ends up with the one key that won."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".snapshot-key-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:  # mkstemp: mode 0600
                handle.write(secrets.token_bytes(32).hex())
            with contextlib.suppress(FileExistsError):  # another process won: use its key
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    return bytes.fromhex(path.read_text().strip())


def snapshot_key(settings: Any) -> bytes:
    """The HMAC key: ``history.snapshot_key`` (hex, e.g. from the environment), else the
    key file (created on first use; riverbed logs its *path*, never the key)."""
    if settings.history.snapshot_key:
        return bytes.fromhex(settings.history.snapshot_key)
    path = Path(settings.history.snapshot_key_file).expanduser()
    existed = path.exists()
    key = load_or_create_key(path)
    if not existed:
        logging.getLogger(__name__).warning(
            "generated a development snapshot signing key at %s (set "
            "RIVERBED_HISTORY__SNAPSHOT_KEY in production)", path)
    return key
