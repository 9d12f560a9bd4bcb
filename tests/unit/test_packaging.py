"""riverbed installs one import namespace (issue riverbed 7): ``riverbed.*`` only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_generic_top_level_names_are_not_riverbed(tmp_path: Path) -> None:
    code = ("import importlib.util, sys\n"
            "for name in ('agents', 'streams', 'schemas'):\n"
            "    spec = importlib.util.find_spec(name)\n"
            "    origin = spec.origin if spec else ''\n"
            "    ours = (origin or '').startswith(sys.argv[1])\n"
            "    assert spec is None or not ours, (name, origin)\n"
            "import riverbed.cli, riverbed.agents.worker, riverbed.schemas\n"
            "print(riverbed.__version__)\n")
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code, repo], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # outside the repository: the installed view
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
