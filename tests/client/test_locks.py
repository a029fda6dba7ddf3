"""The client's locks against daphne: renewal, a lease lost while held, waiting on a
busy lock with a timeout, lock sets, approvals, and the asyncio twin."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from orchestrator_client import (
    AsyncClient,
    Busy,
    Client,
    DeadlockVictim,
    LeaseLost,
    WaitTimeout,
)
from orchestrator_client.errors import ApprovalPending

from orchestrator.core.approvals import approval_decide
from orchestrator.core.models import Resource
from orchestrator.core.resources import resource_create
from tests import factories
from tests.client.conftest import Agents, eventually, free

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HOLDER = Path(__file__).with_name("holder.py")


def test_renewal_keeps_a_lock_past_three_ttls(live, agents):
    resource_create(team=agents.team, name="doc", value=0)
    _, holder_token = agents.make("holder")
    _, rival_token = agents.make("rival")
    ttl = 2
    with Client(live, holder_token) as holder, Client(live, rival_token) as rival:
        with holder.lock("doc", ttl=ttl) as lock:
            started = time.monotonic()
            # Waiting past three leases on the clock is what this test is about.
            while time.monotonic() - started < 3.5 * ttl:
                with pytest.raises(Busy):
                    rival.lock("doc", ttl=ttl, wait=False).acquire()
                time.sleep(0.5)
            assert lock.held
            assert lock.write(1, expected_version=0) == 1
        # Released on leaving the block: the rival has it at once.
        free(rival, "doc")().release()

        # The control: the same lease, not renewed, is over after one TTL.
        unrenewed = holder.lock("doc", ttl=ttl, renew=False).acquire()
        eventually(free(rival, "doc"), "the unrenewed lease to run out", timeout=4 * ttl)
        with pytest.raises(LeaseLost):
            unrenewed.write(2)
    assert Resource.objects.get(team=agents.team, name="doc").version == 1


def test_a_lease_lost_while_held_raises_lease_lost_and_writes_nothing(live, agents):
    resource_create(team=agents.team, name="counter", value="initial")
    _, holder_token = agents.make("stopped")
    _, rival_token = agents.make("rival")
    ttl = 2
    child = subprocess.Popen(
        [sys.executable, str(HOLDER), live, holder_token, "counter", str(ttl)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().split()[0] == "held"
        os.kill(child.pid, signal.SIGSTOP)  # its renewal thread stops with it
        with Client(live, rival_token) as rival:
            lock = eventually(free(rival, "counter"), "the stopped holder's lease to end", 6 * ttl)
            assert lock.write("rival") == 1
            lock.release()
        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("write\n")
        child.stdin.flush()
        answer = child.stdout.readline().split()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()
    assert answer[:2] == ["refused", "LeaseLost"], answer
    counter = Resource.objects.get(team=agents.team, name="counter")
    assert (counter.value, counter.version) == ("rival", 1)  # the holder's write was not applied


def test_waiting_on_a_busy_lock_long_polls_until_granted_or_times_out(live, agents):
    resource_create(team=agents.team, name="doc", value=0)
    _, first_token = agents.make("first")
    _, second_token = agents.make("second")
    with Client(live, first_token) as first, Client(live, second_token) as second:
        held = first.lock("doc").acquire()
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            second.lock("doc", timeout=1).acquire()
        assert 1 <= time.monotonic() - started < 10
        assert second.whoami()["waits"] == []  # the request was withdrawn

        got: dict = {}
        waiter = threading.Thread(
            target=lambda: got.setdefault("lock", second.lock("doc", timeout=30).acquire())
        )
        waiter.start()
        eventually(lambda: second.whoami()["waits"], "the second agent to queue")
        held.release()
        waiter.join(timeout=30)
        lock = got["lock"]
        assert lock.held and lock.fence > held.fence
        assert lock.write(1, expected_version=0) == 1
        lock.release()


def test_a_deadlock_victim_s_wait_raises_deadlock_victim(live):
    agents = Agents()
    agents.team.deadlock_policy = "abort_youngest"
    agents.team.save()
    for name in ("x", "y"):
        resource_create(team=agents.team, name=name, value=0)
    tokens = {name: agents.make(name)[1] for name in ("a", "b")}
    outcomes: dict[str, str] = {}
    holding = {name: threading.Event() for name in tokens}
    go = {name: threading.Event() for name in tokens}

    def agent(name: str, first: str, second: str) -> None:
        with Client(live, tokens[name]) as client:
            mine = client.lock(first, ttl=60).acquire()
            holding[name].set()
            go[name].wait(20)
            try:
                client.lock(second, ttl=60, timeout=30).acquire().release()
                outcomes[name] = "granted"
            except DeadlockVictim:
                outcomes[name] = "victim"
            finally:
                with contextlib.suppress(LeaseLost):  # revoked to break the deadlock
                    mine.release()

    threads = [
        threading.Thread(target=agent, args=("a", "x", "y")),
        threading.Thread(target=agent, args=("b", "y", "x")),
    ]
    for thread in threads:
        thread.start()
    assert holding["a"].wait(20) and holding["b"].wait(20)
    go["a"].set()  # a queues for y; once it waits, b closes the cycle by asking for x
    with Client(live, tokens["a"]) as a:
        eventually(lambda: a.whoami()["waits"], "a to queue for y")
    go["b"].set()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes.values()) == ["granted", "victim"], outcomes


def test_lock_sets_take_all_or_nothing_and_write_through_each_lock(live, agents):
    for name in ("a.py", "b.py", "c.py"):
        resource_create(team=agents.team, name=name, value=0)
    _, one_token = agents.make("one")
    _, two_token = agents.make("two")
    with Client(live, one_token) as one, Client(live, two_token) as two:
        with one.lock_set(["b.py", "a.py"], ttl=10) as held:
            assert {lock.resource for lock in held.locks} == {"a.py", "b.py"}
            assert held["a.py"].write(1, expected_version=0) == 1
            assert held["b.py"].read().value == 0
            with pytest.raises(Busy) as busy:
                two.lock_set(["b.py", "c.py"], wait=False).acquire()
            assert set(busy.value.busy) == {"b.py"}
            assert [holder["agent"] for holder in busy.value.holders] == ["one"]
            with pytest.raises(WaitTimeout):
                two.lock_set(["b.py", "c.py"], timeout=1).acquire()
        assert (
            Resource.objects.get(team=agents.team, name="c.py")
            .locks.filter(released_at__isnull=True)
            .count()
            == 0
        )  # the timed-out set let go of c.py
        with two.lock_set(["b.py", "c.py"], wait=False) as theirs:
            assert theirs["c.py"].write(1) == 1


def test_approvals_are_waited_on_with_a_timeout(live, agents):
    resource_create(team=agents.team, name="budget", value=100, requires_approval=True)
    _, token = agents.make("spender")
    operator = factories.superuser()
    with Client(live, token) as client, client.lock("budget") as lock:
        with pytest.raises(ApprovalPending) as pending:
            lock.write(90, expected_version=0)
        approval = pending.value.approval
        with pytest.raises(WaitTimeout):
            approval.wait(timeout=0.3)
        approval_decide(approval_id=approval.id, decision="approve", user=operator)
        decision = approval.wait(timeout=10)
        assert decision.approved and decision.version == 1
        asked = lock.request_approval(80, expected_version=1, reason="cheaper")
        approval_decide(approval_id=asked.id, decision="reject", user=operator, note="no")
        rejected = asked.wait(timeout=10)
        assert (rejected.status, rejected.approved, rejected.reason) == (
            "rejected",
            False,
            "no",
        )
    assert Resource.objects.get(team=agents.team, name="budget").value == 90


def test_the_async_twin_renews_writes_and_refuses_alike(live, agents):
    resource_create(team=agents.team, name="doc", value=0)
    _, token = agents.make("async")
    _, rival_token = agents.make("rival")

    async def scenario() -> None:
        async with AsyncClient(live, token) as client, AsyncClient(live, rival_token) as rival:
            async with client.lock("doc", ttl=1) as lock:
                await asyncio.sleep(2.5)  # past two leases: the renewal task keeps it
                with pytest.raises(Busy):
                    await rival.lock("doc", wait=False).acquire()
                state = await lock.read()
                assert await lock.write(state.value + 1, expected_version=state.version) == 1
            me = await client.whoami()
            assert me["agent"]["name"] == "async" and me["locks"] == []
            async with rival.lock_set(["doc"], wait=False) as theirs:
                assert await theirs["doc"].write(2) == 2

    asyncio.run(scenario())
