"""The README documents what the commands really do: every field of `demo --json`, the
Python version, the history commands' options."""

from __future__ import annotations

import re
from pathlib import Path

from riverbed.streams.demo import DemoProgress

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_lists_every_field_of_demo_json() -> None:
    listed = re.search(r"`riverbed demo --events 20000 --json`.*?\(`(.*?)`", README, re.S)
    assert listed is not None
    fields = [f.strip() for f in listed.group(1).split(",")]
    assert fields == list(DemoProgress().summary())


def test_readme_states_the_python_version_the_package_requires() -> None:
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"',
                         (ROOT / "pyproject.toml").read_text())
    assert requires is not None
    assert f"Python >= {requires.group(1)}" in README


def test_readme_names_the_lineage_option_of_each_history_command() -> None:
    for command in ("replay", "rollback", "score"):
        row = next(line for line in README.splitlines()
                   if line.startswith(f"| `riverbed {command} "))
        assert "--lineage L" in row, command
