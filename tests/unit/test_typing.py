"""mypy passes on the whole package, with --strict's flags on the pure core (pyproject)."""

from __future__ import annotations

from tests.typecheck import run_mypy


def test_mypy_passes() -> None:
    done = run_mypy()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
