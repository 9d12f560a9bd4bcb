"""riverbed: online learning on Kafka streams, with an event-sourced model history.

One import namespace. The repository keeps its folders ``streams/`` (the platform core and
its Kafka I/O), ``agents/`` (what runs inside a worker process) and ``schemas/`` (Avro
schemas); the installed package maps them to ``riverbed.streams``, ``riverbed.agents`` and
``riverbed.schemas`` (``package-dir`` in pyproject.toml), so nothing is installed under the
generic top-level names ``streams``, ``agents`` or ``schemas``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.2.0"
