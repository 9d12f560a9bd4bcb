"""The dependency rules of the design (docs/design.md), checked on the source by AST:

* the pure core -- fold, features, pending store, offsets, evaluation, snapshots, codecs,
  models, config -- imports no Kafka client, no Faust/mode and nothing of riverbed's agents
  or I/O modules, directly or through other riverbed modules;
* ``riverbed.streams`` reaches into ``riverbed.agents`` only from the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"streams": "riverbed.streams", "agents": "riverbed.agents",
           "schemas": "riverbed.schemas"}
PURE = ("history", "features", "pending", "offsets", "evaluation", "batch_metrics",
        "pending_codec", "history_codec", "snapshots", "models", "config", "errors",
        "deadletter", "codec", "avro_backend", "schema_cache")
FORBIDDEN = ("aiokafka", "aiohttp", "faust", "mode", "riverbed.agents", "riverbed.streams.history_log",
             "riverbed.streams.replay", "riverbed.streams.ingest", "riverbed.streams.output",
             "riverbed.streams.registry")
CLI = ("riverbed.streams.cli", "riverbed.streams.cli_history")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _closure(name: str, modules: dict[str, Path]) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in modules:
            continue
        seen.add(current)
        todo += [n for n in _imports(modules[current]) if n.startswith("riverbed.")]
        seen |= {n for n in _imports(modules[current]) if not n.startswith("riverbed.")}
    return seen


def test_the_pure_core_does_no_io() -> None:
    modules = _modules()
    for stem in PURE:
        reached = _closure(f"riverbed.streams.{stem}", modules)
        bad = sorted(n for n in reached if n.startswith(FORBIDDEN))
        assert not bad, f"riverbed.streams.{stem} reaches {bad}"


def test_streams_reaches_agents_only_from_the_command_line() -> None:
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("riverbed.streams") and name not in CLI:
            agents = sorted(n for n in _imports(path) if n.startswith("riverbed.agents"))
            assert not agents, f"{name} imports {agents}"
