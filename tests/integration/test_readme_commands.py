"""The README's "Looking at a model" `curl` commands run against a real worker (the shared
one with a drift and a rollback), on its port instead of 6066, and answer what it says."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import WebWorker

pytestmark = pytest.mark.integration

README = (ROOT / "README.md").read_text()


def _curl_commands() -> list[str]:
    section = README.split("## Looking at a model", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)[0]
    joined = block.replace("\\\n", " ")
    return [line.split("  #", 1)[0].strip() for line in joined.splitlines()
            if line.startswith("curl ")]


def test_the_readme_curl_commands_answer(web_worker: WebWorker) -> None:
    commands = _curl_commands()
    assert len(commands) == 5
    answers = []
    for command in commands:
        command = command.replace("127.0.0.1:6066", f"127.0.0.1:{web_worker.child.port}")
        done = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"],
                              capture_output=True, text=True, timeout=60, check=False)
        body, _, status = done.stdout.rpartition("\n")
        assert done.returncode == 0 and status == "200", (command, done.stdout, done.stderr)
        answers.append(json.loads(body))
    models, predicted, history, metrics, ready = answers
    assert models["models"][0]["name"] == "agrawal-lr" and models["models"][0]["lineage"] == 1
    (prediction,) = predicted["predictions"]
    assert prediction["prediction"] in (True, False) and predicted["model_seq"] == 6000
    assert any(e["kind"] == "rollback" for e in history["entries"])
    assert len(metrics["points"]) == 5
    assert ready["ready"] is True
