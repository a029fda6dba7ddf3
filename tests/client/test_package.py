"""The client package as it is installed and documented: what the guard imports, the
hooks block of docs/guard.md, and the example of docs/api.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from orchestrator_client.guard.hooks import EDIT_TOOLS, READ_TOOLS

from orchestrator.core.models import Resource
from tests.client.conftest import ROOT, Agents


def test_the_guard_imports_neither_the_server_nor_httpx_nor_asyncio():
    """The guard starts for every edit: what it imports is its latency (bench/guard.py)."""
    probe = (
        "import sys; import orchestrator_client.guard.cli, orchestrator_client.guard.hooks, "
        "orchestrator_client.guard.precommit, orchestrator_client.guard.state; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'django', 'orchestrator', 'agents', 'httpx', 'asyncio'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    client = (
        "import sys, orchestrator_client as o; o.Client; o.AsyncClient; "
        "print('django' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, cwd="/")
    assert done.stdout.strip() == "False", done.stderr


def test_the_documented_hooks_block_sends_the_guard_the_events_it_handles():
    text = (ROOT / "docs" / "guard.md").read_text()
    block = re.search(r"```json\n(\{\n  \"hooks\".*?)\n```", text, re.S)
    assert block, "docs/guard.md has the .claude/settings.json block"
    hooks = json.loads(block.group(1))["hooks"]
    assert sorted(hooks) == ["PostToolUse", "PreToolUse", "SessionEnd", "Stop"]
    matchers = {
        event: [group.get("matcher") for group in groups] for event, groups in hooks.items()
    }
    assert matchers["PreToolUse"] == ["Edit|Write|MultiEdit|NotebookEdit"]
    assert set(matchers["PreToolUse"][0].split("|")) == EDIT_TOOLS
    assert set(matchers["PostToolUse"][0].split("|")) == EDIT_TOOLS | READ_TOOLS
    assert matchers["Stop"] == matchers["SessionEnd"] == [None]
    for groups in hooks.values():
        for handler in groups[0]["hooks"]:
            assert handler["type"] == "command" and handler["command"] == "orchestrator-guard"
            assert handler["timeout"] > 5  # above the guard's own request timeout


@pytest.mark.django_db(transaction=True)
def test_the_example_run_twice_at_once_loses_neither_increment(live, agents: Agents):
    example = ROOT / "docs" / "examples" / "api_client.py"
    tokens = [agents.make(name)[1] for name in ("scout", "scribe")]
    command = [sys.executable, str(example), live, "shared-counter"]
    runs = [
        subprocess.Popen(
            command, env={**os.environ, "TOKEN": token}, stdout=subprocess.PIPE, text=True
        )
        for token in tokens
    ]
    outputs = sorted(run.communicate(timeout=60)[0].strip() for run in runs)
    assert outputs == ["version 1", "version 2"]
    counter = Resource.objects.get(team=agents.team, name="shared-counter")
    assert (counter.value, counter.version) == (2, 2)
