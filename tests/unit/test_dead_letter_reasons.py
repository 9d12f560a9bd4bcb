"""The README's table of dead-letter reasons is the set of reasons the code can emit, found
by AST: ``reason=`` arguments, reasons assigned before a dead letter is built, literal
reasons passed to ``dead_letter``, and the class default of an event error raised without
one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _defaults() -> dict[str, str]:
    """Event error class -> its default reason (streams/errors.py)."""
    found = {}
    for node in ast.walk(ast.parse((ROOT / "streams" / "errors.py").read_text())):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if (isinstance(item, ast.AnnAssign | ast.Assign) and isinstance(
                        item.value, ast.Constant) and "reason" in ast.unparse(item)):
                    found[node.name] = str(item.value.value)
    return found


def _constants(node: ast.expr | None) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _constants(node.body) | _constants(node.orelse)
    return set()


def _emitted() -> set[str]:
    defaults, reasons = _defaults(), set()
    for path in [*(ROOT / "streams").glob("*.py"), *(ROOT / "agents").glob("*.py")]:
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func).rsplit(".", 1)[-1]
                keywords = {k.arg: k.value for k in node.keywords}
                if "reason" in keywords:
                    reasons |= _constants(keywords["reason"])
                elif name in defaults and len(node.args) < 2:
                    reasons.add(defaults[name])
                if name == "dead_letter" and len(node.args) > 1:
                    reasons |= _constants(node.args[1])
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "reason" for t in node.targets):
                reasons |= _constants(node.value)
    return reasons


def test_the_readme_lists_every_dead_letter_reason_and_no_other() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("Dead-letter reasons", 1)[1].split("\n\n", 2)[1]
    listed = {code for row in table.splitlines()[2:]
              for code in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    emitted = _emitted()
    assert {"unknown_schema_id", "decode_error", "internal_error"} <= emitted
    assert listed == emitted
