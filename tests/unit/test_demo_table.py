"""The demo's table shows the numbers of its summary (the final table used to lag behind)."""

from __future__ import annotations

import time

from rich.console import Console

from riverbed.cli import _demo_table
from riverbed.streams.demo import DemoProgress


def _text(progress: DemoProgress) -> str:
    console = Console(record=True, width=200)
    console.print(_demo_table(progress, ""))
    return console.export_text()


def test_the_table_shows_the_summary_numbers() -> None:
    now = time.monotonic()
    progress = DemoProgress(events=3000, valid_events=2970, bad_events=30, predictions=2970,
                            dead_letters=30, learned=2970, model_seq=2969, correct=2500,
                            scored=2970, started=now - 2.0, last_output=now)
    summary = progress.summary()
    row = next(line for line in _text(progress).splitlines() if "2,970" in line)
    cells = [c.strip() for c in row.strip().strip("│").split("│")]
    assert cells == [f"{summary['events']:,}", f"{summary['predictions']:,}",
                     f"{summary['events_per_s']:,.0f}", f"{summary['accuracy']:.3f}",
                     f"{summary['model_seq']:,}", f"{summary['learned']:,}",
                     f"{summary['dead_letters']:,}"]


def test_no_rate_before_the_first_output() -> None:
    progress = DemoProgress(events=500)
    assert progress.summary()["events_per_s"] == 0.0
    assert "500" in _text(progress)
