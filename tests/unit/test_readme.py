"""The README's Python examples run, and .ci/run runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("index,snippet", list(enumerate(
    re.findall(r"```python\n(.*?)```", README, flags=re.S))))
def test_readme_python_snippets_run(index: int, snippet: str) -> None:
    exec(compile(snippet, f"README.md[python {index}]", "exec"), {})  # noqa: S102 - our docs


def test_ci_runs_the_readme_test_command() -> None:
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = bash_blocks[1].strip()
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
    assert "riverbed demo" in bash_blocks[0]
