"""The benchmark scripts run with the bench extra alone: none of them may need a test-only
package (``pip install -e '.[bench]' && python bench/suite.py`` is the documented command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "__init__.py")
#: installed by the ``test`` extra only (pyproject.toml)
TEST_ONLY = ("pytest", "hypothesis", "testcontainers")


def test_every_bench_script_is_checked() -> None:
    assert {"suite.py", "throughput.py", "latency.py", "replay.py", "hotpath.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_imports_without_test_packages(script: str) -> None:
    blocked = "".join(f"sys.modules[{name!r}] = None; " for name in TEST_ONLY)
    code = (f"import runpy, sys; {blocked}"
            f"runpy.run_path({str(ROOT / 'bench' / script)!r}, run_name='not_main')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
