"""Scenarios from the field, run on real RQ (in-process SimpleWorker in burst mode),
PostgreSQL and Redis, then checked by check_run: guarded runs finish with no
anomaly; an unguarded booking shows its double bookings."""

from __future__ import annotations

import json
from io import StringIO

import django_rq
import pytest
from django.core.management import call_command
from django.db.models import Count

from agents.scenarios import OPENING_BALANCE, TRANSFERS_PER_TELLER
from orchestrator.core.models import Agent, Conflict, LockSet, Resource, Run, Step
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queue(redis_conn):
    return django_rq.get_queue("steps")


def drain() -> None:
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)


def scenario(*args: str) -> Run:
    out = StringIO()
    call_command("scenario", *args, stdout=out)
    return Run.objects.get(pk=int(out.getvalue().strip().splitlines()[-1]))


def check(run: Run) -> dict:
    out = StringIO()
    call_command("check_run", str(run.pk), "--json", stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.parametrize("name", ["booking", "pipeline", "deadlock", "transfers"])
def test_a_guarded_scenario_finishes_with_no_anomaly(queue, name: str) -> None:
    run = scenario(name, "--agents", "8", "--seed", "7")
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    report = check(run)
    assert report["run"] == run.pk
    assert (report["ok"], report["status"]) == (True, "finished")
    assert report["anomalies"] == {
        "double_bookings": 0,
        "lost_updates": 0,
        "non_holder_writes": 0,
        "overlapping_holds": 0,
    }, report["details"]
    assert report["unfinished_agents"] == []
    assert len(report["agents"]) == 8
    if name == "deadlock":  # the cycles formed and were broken by the team's policy
        assert Conflict.objects.filter(team=run.team, kind="deadlock", status="resolved").exists()
    if name == "transfers":  # the same crossing orders, taken as lock sets: no cycle
        assert not Conflict.objects.filter(team=run.team, kind="deadlock").exists()


def test_transfers_lock_both_accounts_at_once_and_keep_every_cent(queue) -> None:
    """Tellers name their two accounts in crossing orders; each transfer is one lock set,
    so they queue as sets and never wait on each other in a cycle. No money is lost or
    made: the balances sum to what they started at, each moved by its transfers."""
    run = scenario("transfers", "--agents", "9", "--seed", "5")
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    accounts = Resource.objects.filter(team=run.team)
    assert accounts.count() == 3
    assert sum(account.value for account in accounts) == 3 * OPENING_BALANCE
    # Each transfer of each teller's script applied once: every debit and every credit.
    expected = dict.fromkeys((account.name for account in accounts), OPENING_BALANCE)
    orders = set()
    for agent in Agent.objects.filter(team=run.team):
        for entry in agent.config["script"]:
            if entry["tool"] == "acquire_all":
                orders.add(tuple(entry["args"]["resources"]))
            if entry["tool"] == "write":
                expected[entry["args"]["resource"]] += entry["args"]["value"]["$inc"]
    assert {account.name: account.value for account in accounts} == expected
    assert any(order[::-1] in orders for order in orders)  # the orders did cross
    sets = LockSet.objects.filter(agent__team=run.team)
    assert sets.count() == 9 * TRANSFERS_PER_TELLER
    assert set(sets.values_list("status", flat=True)) == {"granted"}
    assert sets.filter(requests__isnull=False).exists()  # some waited for others
    assert not Conflict.objects.filter(team=run.team, kind="deadlock").exists()
    assert check(run)["ok"] is True


def test_an_unguarded_booking_double_books_and_the_checker_says_so(queue) -> None:
    run = scenario("booking", "--agents", "8", "--seed", "7", "--unguarded")
    assert run.unguarded
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    report = check(run)
    anomalies = report["anomalies"]
    # Everybody read a free slot, so every booking applied; all but one per slot are extra.
    used = Resource.objects.filter(team=run.team, version__gt=0).count()
    assert 0 < used < 8
    assert anomalies["double_bookings"] == 8 - used
    assert anomalies["lost_updates"] == 8 - used  # each later booking overwrote the first
    assert anomalies["non_holder_writes"] == 8  # no write held a lock
    assert anomalies["overlapping_holds"] == 0  # nobody took a lock at all
    assert not Conflict.objects.filter(team=run.team).exists()  # nothing stopped them
    assert report["ok"] is False  # the run finished, but with the damage done
    text = StringIO()
    call_command("check_run", str(run.pk), stdout=text)
    last_line = text.getvalue().strip().splitlines()[-1]
    assert last_line == f"FAILED: {sum(anomalies.values())} anomalies"


@pytest.mark.parametrize("name", ["pipeline", "deadlock", "transfers"])
def test_unguarded_shared_documents_lose_updates(queue, name: str) -> None:
    run = scenario(name, "--agents", "8", "--seed", "7", "--unguarded")
    drain()
    report = check(run)
    assert report["status"] == "finished"
    assert report["anomalies"]["lost_updates"] > 0
    assert report["anomalies"]["non_holder_writes"] == report["writes"] > 0


def finish_summaries(run: Run) -> dict[str, str]:
    """Each agent's summary in its successful finish."""
    return {
        step.agent.name: call["arguments"]["summary"]
        for step in Step.objects.filter(run=run).select_related("agent")
        for call in step.tool_calls
        if call["tool"] == "finish" and call["result"].get("ok")
    }


@pytest.mark.parametrize("seed", [7, 11])
def test_the_guarded_booking_gives_each_slot_to_one_agent(queue, seed: int) -> None:
    """A guest turned away from its slot books another free one, or finishes saying it
    could not book: it never retries a booking that cannot succeed."""
    run = scenario("booking", "--agents", "8", "--seed", str(seed))
    drain()
    slots = {slot.name: slot for slot in Resource.objects.filter(team=run.team)}
    booked = [slot for slot in slots.values() if slot.value]
    assert booked and all(len(slot.value) == 1 and slot.version == 1 for slot in booked)
    refused = Conflict.objects.filter(team=run.team, kind="write_conflict").count()
    assert refused > 0  # several agents wanted the same slot and were turned away
    summaries = finish_summaries(run)
    assert len(summaries) == 8
    for guest, summary in summaries.items():
        if summary.startswith("booked "):
            assert slots[summary.removeprefix("booked ")].value == [guest]
        else:
            assert summary.startswith("could not book: ")
            assert guest not in [name for slot in booked for name in slot.value]
    assert sum(s.startswith("booked ") for s in summaries.values()) == len(booked)
    # At most 3 slots tried (4 steps each taken, 5 for the one booked): nobody spins.
    steps = Step.objects.filter(run=run).values("agent").annotate(n=Count("id"))
    assert max(row["n"] for row in steps) <= 13
    text = StringIO()
    call_command("check_run", str(run.pk), stdout=text)
    assert text.getvalue().strip().splitlines()[-1] == "OK"


def test_the_demo_keeps_a_deadlock_and_an_approval_waiting_for_the_operator(
    queue, monkeypatch
) -> None:
    """What `make run` starts: looping agents leave a deadlock and a contested write
    to the operator (ask_operator), while the ticket sellers go on."""
    from django.core.management import call_command

    from agents import scenarios
    from orchestrator.core.deadlocks import deadlock_sweep
    from orchestrator.core.models import Approval

    monkeypatch.setattr(scenarios, "DEMO_THINK", [0, 0])
    real_plan = scenarios.plan_demo

    def no_thinking(prefix, agents, rng):
        plan = real_plan(prefix, agents, rng)
        for agent in plan.agents:
            agent.config = {**agent.config, "think": [0, 0]}
        return plan

    monkeypatch.setitem(scenarios.SCENARIOS, "demo", no_thinking)
    call_command("demo", "--once", stdout=StringIO())
    demo = Run.objects.get(team__name__startswith="demo-")
    assert Run.objects.count() == 5  # booking, pipeline, deadlock, transfers ran once beside it

    worker = django_rq.get_worker("steps", worker_class=SimpleWorker)
    for _ in range(20):  # the monitor's sweep, between bursts of agent turns
        worker.work(burst=True, max_jobs=200)
        deadlock_sweep()
        if (
            Conflict.objects.filter(team=demo.team, kind="deadlock", status="open").exists()
            and Approval.objects.filter(resource__team=demo.team, status="pending").exists()
        ):
            break
    else:
        pytest.fail("the demo never left both a deadlock and an approval to the operator")
    demo.refresh_from_db()
    assert demo.status == Run.Status.RUNNING
    sellers = Resource.objects.filter(team=demo.team, name__contains="-tickets-")
    assert sum(resource.version for resource in sellers) > 0
