"""The coding scenario (agents/coding.py), run as a user runs it: ``manage.py scenario
coding --agents 3``. Three agents edit overlapping files of a real git repository in
tmp_path. Guarded, every tool call goes through orchestrator-guard, the installed
console script run with Claude Code's hook JSON on stdin, against the daphne that the
command starts on the test database; unguarded, the same edits go without it. Then
check_run: no lost edit and no stale overwrite guarded; both unguarded."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from agents.coding import BUSY, EDITS_PER_AGENT, STALE, Edit, plan_coding
from orchestrator.core.models import Agent, AgentStatus, Lock, Resource, Run, Step
from orchestrator.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)

SEED = 7


def scenario(repo: Path, *args: str) -> tuple[Run, str]:
    out = StringIO()
    call_command(
        "scenario", "coding", "--agents", "3", "--seed", str(SEED), "--repo", str(repo), *args,
        stdout=out,
    )  # fmt: skip
    return Run.objects.get(pk=int(out.getvalue().strip().splitlines()[-1])), out.getvalue()


def check(run: Run) -> dict:
    out = StringIO()
    call_command("check_run", str(run.pk), "--json", stdout=out)
    return json.loads(out.getvalue())


def planned() -> list[Edit]:
    """Every edit the three agents set out to make (the plan is the seed's)."""
    plan = plan_coding(3, EDITS_PER_AGENT, random.Random(SEED))
    return [edit for edits in plan.edits.values() for edit in edits]


def journal(run: Run) -> list[dict]:
    return [call for step in Step.objects.filter(run=run) for call in step.tool_calls]


def test_guarded_the_guard_refuses_the_clashing_edits_and_none_is_lost(tmp_path) -> None:
    repo = tmp_path / "repo"
    run, out = scenario(repo)
    report = check(run)
    assert (report["ok"], report["status"], report["unguarded"]) == (True, "finished", False)
    assert report["anomalies"] == {
        "double_bookings": 0,
        "lost_updates": 0,
        "non_holder_writes": 0,
        "overlapping_holds": 0,
        "lost_edits": 0,
        "stale_overwrites": 0,
    }, report["details"]
    assert report["unfinished_agents"] == [] and len(report["agents"]) == 3
    edits = planned()
    assert report["edits"] == len(edits) == 9
    for edit in edits:  # every agent's edits are in the final files
        assert edit.text in (repo / edit.file).read_text(), edit

    # The edits clashed, and the guard refused them: another agent held the file, and
    # then (tried again from the old read) the file had changed since.
    refused = Counter(
        call["result"]["refused"] for call in journal(run) if call["result"].get("refused")
    )
    assert refused[BUSY] > 0 and refused[STALE] > 0, refused
    assert "refused (busy): src/" in out and "refused (stale): src/" in out

    # The guard recorded each edit on the server (the file's hash, written with the
    # lock's fence), took its locks as the agents' own, and released them all.
    for path in {edit.file for edit in edits}:
        resource = Resource.objects.get(team=run.team, name=path)
        assert resource.version == sum(edit.file == path for edit in edits)
        digest = hashlib.sha256((repo / path).read_bytes()).hexdigest()
        assert resource.value == {"sha256": digest}
    locks = Lock.objects.filter(resource__team=run.team)
    assert {lock.agent.team_id for lock in locks} == {run.team_id}
    assert locks.count() >= len(edits) and not locks.filter(released_at__isnull=True).exists()
    assert set(Agent.objects.filter(team=run.team).values_list("status", flat=True)) == {
        AgentStatus.DONE
    }
    assert "the final files hold 9 of the 9 edits" in out
    assert "check_run: lost_edits 0, stale_overwrites 0: OK" in out


def test_unguarded_the_same_edits_are_lost_and_check_run_says_which(tmp_path) -> None:
    repo = tmp_path / "repo"
    run, out = scenario(repo, "--unguarded")
    report = check(run)
    assert (report["ok"], report["status"], report["unguarded"]) == (False, "finished", True)
    counts = report["anomalies"]
    assert counts["lost_edits"] > 0 and counts["stale_overwrites"] > 0, report["details"]
    assert report["edits"] == 9  # every agent made every edit, as far as it could tell
    assert not any(call["result"].get("refused") for call in journal(run))

    # The lost edits are exactly the planned ones missing from the final files.
    missing = [edit for edit in planned() if edit.text not in (repo / edit.file).read_text()]
    assert len(missing) == counts["lost_edits"]
    lost = [d["detail"] for d in report["details"] if d["kind"] == "lost_edits"]
    for edit in missing:
        assert sum(repr(edit.text) in detail for detail in lost) == 1, edit
    assert f"the final files hold {9 - len(missing)} of the 9 edits" in out
    assert f"check_run: lost_edits {len(missing)}, " in out
    # Nobody told the server anything: the files' resources are as they started.
    assert set(Resource.objects.filter(team=run.team).values_list("version", flat=True)) == {0}

    # The interleaving is the seed's: the same run again loses the same edits.
    again, _ = scenario(tmp_path / "again", "--unguarded")
    assert check(again)["anomalies"] == counts
    for edit in {edit.file for edit in planned()}:
        assert (tmp_path / "again" / edit).read_text() == (repo / edit).read_text()


def test_a_server_that_does_not_answer_fails_the_run_and_says_so(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(CommandError, match=f"the server at {url} did not answer"):
        scenario(tmp_path / "repo", "--url", url)
    run = Run.objects.get()
    assert run.status == Run.Status.FAILED
    assert set(run.steps.values_list("status", flat=True)) == {Step.Status.FAILED}
    assert check(run)["unfinished_agents"] == sorted(run.team.agents.values_list("name", flat=True))
