"""Contract checks every supported model spec must pass (like River's ``river/checks``).

* ``check_picklable``: a pickled and unpickled model predicts exactly like the original.
* ``check_fingerprint_across_processes``: the fingerprint after learning the same stream is
  identical in two fresh interpreters with different ``PYTHONHASHSEED``.
* ``check_snapshot_restore``: signed snapshot -> verified restore -> the next 1,000
  predictions (with learning in between) are identical.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from riverbed.streams.config import ModelSettings
from riverbed.streams.history import Snapshot
from riverbed.streams.models import OnlineModel
from riverbed.streams.snapshots import fingerprint, load_snapshot, make_chunks

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ("salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan")


def stream(n: int, seed: int = 5) -> Iterator[tuple[dict[str, float], Any]]:
    """Float feature dicts and labels from the Agrawal generator."""
    from riverbed.streams.datasets import events

    for e in events("agrawal", n, seed=seed):
        yield {f: float(e[f]) for f in FEATURES}, e["label"]


def _trained(spec: ModelSettings, n: int) -> tuple[OnlineModel, list[dict[str, float]]]:
    model = OnlineModel(spec)
    probe: list[dict[str, float]] = []
    for x, y in stream(n):
        if len(probe) < 16:
            probe.append(x)
        model.learn(x, y)
    return model, probe


def check_picklable(spec: ModelSettings, n: int = 500) -> None:
    model, probe = _trained(spec, n)
    clone = pickle.loads(pickle.dumps(model.estimator))
    assert fingerprint(clone, probe) == fingerprint(model.estimator, probe), spec.name


def check_fingerprint_across_processes(spec: ModelSettings, n: int = 2000) -> None:
    code = ("import json,sys; "
            "from riverbed.streams.checks import fingerprint_in_this_process as f; "
            "from riverbed.streams.config import ModelSettings as M; "
            "print(f(M(**json.loads(sys.argv[1])), int(sys.argv[2])))")
    raw = json.dumps({"name": spec.name, "task": spec.task, "seed": spec.seed,
                      "pipeline": [dict(s) for s in spec.pipeline]})
    prints = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", code, raw, str(n)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300, check=True)
        prints.add(done.stdout.strip())
    assert len(prints) == 1, f"{spec.name}: fingerprints differ across processes: {prints}"


def fingerprint_in_this_process(spec: ModelSettings, n: int) -> str:
    """Fingerprint after learning ``n`` examples (used by the cross-process check)."""
    model, probe = _trained(ModelSettings(spec.name, spec.task, tuple(spec.pipeline), spec.seed), n)
    return fingerprint(model.estimator, probe)


def check_snapshot_restore(spec: ModelSettings, n: int = 1000, after: int = 1000) -> None:
    model, probe = _trained(spec, n)
    key = os.urandom(32)
    chunks = make_chunks(model.estimator, {}, key, purpose="checkpoint", seq=model.seq,
                         lineage=0, model_fingerprint=fingerprint(model.estimator, probe),
                         model=spec.name, epoch=1)
    c = chunks[0]
    snapshot = Snapshot(c.snapshot_id, c.purpose, 1, c.seq, 0,
                        b"".join(x.data for x in chunks), c.sha256, c.hmac, c.fingerprint, 0,
                        spec.name)
    restored, _ = load_snapshot(snapshot, key)
    assert fingerprint(restored, probe) == c.fingerprint
    twin = OnlineModel(spec, restored)
    for x, y in stream(after, seed=99):
        assert model.predict(x) == twin.predict(x), spec.name
        model.learn(x, y)
        twin.learn(x, y)
