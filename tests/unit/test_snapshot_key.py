"""The development snapshot key: created once, atomically, even by processes racing."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path
from typing import Any

from riverbed.streams.snapshots import load_or_create_key

RACERS = 8


def _start_a_worker(path: Path, start: Any, results: Any) -> None:
    start.wait()
    try:
        results.put(load_or_create_key(path).hex())
    except BaseException as exc:  # noqa: BLE001 -- what the old O_EXCL code raised
        results.put(f"error: {exc!r}")


def test_processes_starting_at_once_on_a_fresh_machine_share_one_whole_key(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(10):  # a race: several fresh machines
        path = tmp_path / str(attempt) / "snapshot.key"
        start, results = context.Barrier(RACERS), context.Queue()
        racers = [context.Process(target=_start_a_worker, args=(path, start, results))
                  for _ in range(RACERS)]
        for racer in racers:
            racer.start()
        keys = [results.get(timeout=60) for _ in racers]
        for racer in racers:
            racer.join(timeout=60)
        assert len(set(keys)) == 1, keys  # no error, no empty or different key
        assert len(bytes.fromhex(keys[0])) == 32
        assert path.read_text() == keys[0]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in path.parent.iterdir()] == ["snapshot.key"]  # no temporary
        assert load_or_create_key(path).hex() == keys[0]  # later starts read it
