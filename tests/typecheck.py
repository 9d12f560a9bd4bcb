"""Type-check the installed namespace as mypy sees it: ``riverbed.streams`` etc. live in the
folders ``streams/``, ``agents/``, ``schemas/`` (setuptools ``package-dir``), which mypy
cannot map, so a tree of symlinks lays them out as the installed package. Run:
``python -m tests.typecheck``; the unit suite runs it too (tests/unit/test_typing.py)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_mypy() -> subprocess.CompletedProcess[str]:
    """mypy over the ``riverbed`` package with the project's configuration."""
    with tempfile.TemporaryDirectory(prefix="riverbed-mypy-") as tmp:
        package = Path(tmp) / "riverbed"
        package.mkdir()
        for source in (ROOT / "riverbed").glob("*.py"):
            (package / source.name).symlink_to(source)
        for folder in ("streams", "agents", "schemas"):
            (package / folder).symlink_to(ROOT / folder)
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
             "--cache-dir", str(Path(tmp) / ".mypy_cache"), "-p", "riverbed"],
            cwd=tmp, env={"MYPYPATH": tmp, "PATH": "/usr/bin:/bin"}, capture_output=True,
            text=True, check=False)


if __name__ == "__main__":
    done = run_mypy()
    sys.stdout.write(done.stdout + done.stderr)
    sys.exit(done.returncode)
