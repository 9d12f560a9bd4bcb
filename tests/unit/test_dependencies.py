"""The dependency rules of the design (docs/design.md), checked on the source by AST:

* the pure core -- fold, features, pending store, offsets, evaluation, snapshots, codecs,
  models, config -- imports no Kafka client, no Faust/mode and nothing of riverbed's agents
  or I/O modules, directly or through other riverbed modules;
* ``riverbed.streams`` never imports ``riverbed.agents``: the command line
  (``riverbed.cli``, ``riverbed.cli_history``), which composes both, sits above them;
* inside a worker, the label join never calls back into the processor (one direction).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"streams": "riverbed.streams", "agents": "riverbed.agents",
           "schemas": "riverbed.schemas", "riverbed": "riverbed"}
PURE = ("history", "features", "pending", "offsets", "evaluation", "batch_metrics",
        "pending_codec", "history_codec", "snapshots", "models", "config", "errors",
        "deadletter", "codec", "avro_backend", "effects", "api_schema", "predict_only",
        "history_summary", "metrics_series", "schema_cache", "training")
FORBIDDEN = ("aiokafka", "aiohttp", "faust", "mode", "riverbed.agents",
             "riverbed.streams.history_log", "riverbed.streams.replay", "riverbed.streams.ingest",
             "riverbed.streams.output", "riverbed.streams.registry")
#: the processor and the label join: pure too (no I/O), though they live with the agents
PURE_AGENTS = ("inference", "labels", "batch")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            if folder == "riverbed" and path.stem == "__init__":
                name = "riverbed"
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


def test_the_processor_and_label_join_do_no_io() -> None:
    modules = _modules()
    forbidden = tuple(f for f in FORBIDDEN if f != "riverbed.agents")
    for stem in PURE_AGENTS:
        reached = _closure(f"riverbed.agents.{stem}", modules)
        bad = sorted(n for n in reached if n.startswith(forbidden)
                     or n.startswith("riverbed.agents.")
                     and n.removeprefix("riverbed.agents.") not in PURE_AGENTS)
        assert not bad, f"riverbed.agents.{stem} reaches {bad}"


def test_streams_never_imports_agents() -> None:
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("riverbed.streams"):
            agents = sorted(n for n in _imports(path) if n.startswith("riverbed.agents"))
            assert not agents, f"{name} imports {agents}"


def test_the_label_join_does_not_call_back_into_the_processor() -> None:
    modules = _modules()
    imported = _imports(modules["riverbed.agents.labels"])
    assert "riverbed.agents.inference" not in imported
