"""Avro schemas shipped with riverbed (``*.avsc`` beside this file).

riverbed's own records (``prediction``, ``dead_letter``, ``label``) and example event
schemas (``agrawal_event``, ``phishing_event``). Downstream consumers may copy them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent


def shipped_names() -> list[str]:
    """Names of every schema shipped with riverbed."""
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc"))


def load_schema(name_or_path: str, base_dir: Path | None = None) -> dict[str, Any]:
    """Load a shipped schema by name, or an ``.avsc`` file by path (relative to ``base_dir``)."""
    shipped = SCHEMA_DIR / f"{name_or_path}.avsc"
    if shipped.is_file():
        path = shipped
    else:
        path = Path(name_or_path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    data: dict[str, Any] = json.loads(path.read_text())
    return data
