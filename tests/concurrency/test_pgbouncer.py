"""The protocol through a real PgBouncer in transaction mode (docs/deploy.md, PgBouncer).

A PgBouncer (Debian's package) is started on a free loopback port in front of the
test PostgreSQL, with ``pool_mode = transaction`` and two server connections for
the test database, and worker processes connect through it with
``ORCHESTRATOR_PGBOUNCER=1``. Seven processes share those two server connections,
which change hands after every transaction: any session state the code kept (a
session-level advisory lock, a named prepared statement, a ``SET`` without
``LOCAL``, a held cursor) would land in another process's session. Meanwhile they
run the protocol's advisory-locked paths: lock cycles with queued waiters and the
write that releases (the event log's advisory lock in every transaction), lock sets,
and folder locks (the team's path lock). No update is lost, no two holds overlap,
and PgBouncer's own statistics show the traffic went through it, on no more than
two server connections.

Skipped, saying so, when the pgbouncer binary is missing (``apt-get install
pgbouncer``; .ci/run installs it). PgBouncer listens on TCP and reaches the test
PostgreSQL as the tests do: over TCP, or the embedded server's unix socket.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from orchestrator.core.models import Conflict, Lock, LockSet, Resource
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.resources import resource_create
from tests import factories
from tests.concurrency.checks import check_counter_history, check_folder_holds
from tests.concurrency.processes import Workers, context, current_database_name, wait_until
from tests.concurrency.tasks import counter_history, counter_setup

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BINARY = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
POOL_SIZE = 2  # server connections for the test database: fewer than the clients
TTL = 60  # never expires under load: every write applies
DEADLINE = 240  # liveness only


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def pgbouncer() -> Iterator[int]:
    """A PgBouncer in transaction mode in front of the test PostgreSQL: its port."""
    if BINARY is None:
        pytest.skip("no pgbouncer binary: apt-get install pgbouncer (Debian's package)")
    db = settings.DATABASES["default"]
    host = str(db.get("HOST") or "127.0.0.1")
    user = db.get("USER") or "postgres"
    port = _free_port()
    # Readable by the user PgBouncer runs as (below).
    workdir = Path(tempfile.mkdtemp(prefix="orch-pgbouncer-"))
    workdir.chmod(0o755)
    password = (db.get("PASSWORD") or "").replace('"', '""')
    (workdir / "users.txt").write_text(f'"{user}" "{password}"\n')
    server = f"host={host} port={db.get('PORT') or 5432}"
    if db.get("PASSWORD"):
        server += f" password={db['PASSWORD']}"
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
* = {server} pool_size={POOL_SIZE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "users.txt"}
admin_users = {user}
pool_mode = transaction
max_client_conn = 100
server_reset_query =
"""
    )
    for name in ("users.txt", "pgbouncer.ini"):
        (workdir / name).chmod(0o644)
    command = [BINARY]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: as the owner of the embedded server's
        # socket directory (the only user who may enter it), else an ordinary one.
        if host.startswith("/"):
            run_as = pwd.getpwuid(Path(host).stat().st_uid).pw_name
        else:
            run_as = "postgres" if _user_exists("postgres") else "nobody"
        command += ["-u", run_as]
    log = (workdir / "pgbouncer.log").open("w")
    process = subprocess.Popen(
        [*command, str(workdir / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT
    )

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"pgbouncer exited: {(workdir / 'pgbouncer.log').read_text()}")
        return _admin(port, user, "SHOW VERSION") is not None

    try:
        wait_until(up, timeout=30, what="pgbouncer accepting connections")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _admin(port: int, user: str, command: str) -> list[dict] | None:
    """Rows of a PgBouncer console command (``SHOW STATS``), or None if it is not up."""
    try:
        with psycopg.connect(
            host="127.0.0.1", port=port, user=user, dbname="pgbouncer", autocommit=True
        ) as conn:
            conn.prepare_threshold = None  # the console knows the simple protocol only
            cursor = conn.execute(command)
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except psycopg.OperationalError:
        return None


def test_the_protocol_through_pgbouncer_in_transaction_mode(pgbouncer: int) -> None:
    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    name = current_database_name()
    through = {
        "DATABASE_URL": f"postgres://{user}@127.0.0.1:{pgbouncer}/{name}",
        "ORCHESTRATOR_PGBOUNCER": "1",
    }
    counters = counter_setup(agents=3, counters=2, prefix="pgb")
    sets = counter_setup(agents=2, counters=3, prefix="pgbset")
    team = factories.team(default_lease_ttl=TTL)
    path_agents = [factories.agent(team_=team, name=f"pgb-path-{i}").pk for i in range(2)]
    folder = resource_create(team=team, name="src/", value=0)
    files = [resource_create(team=team, name=f"src/f{i}.py", value=0) for i in range(2)]
    agent_ids = [*counters["agent_ids"], *sets["agent_ids"], *path_agents]
    ctx = context()
    start = ctx.Barrier(len(agent_ids))
    wake = {agent_id: ctx.Event() for agent_id in agent_ids}
    common = {"ttl": TTL, "start": start, "wake_events": wake}
    began = time.monotonic()
    with Workers(env=through) as workers:
        for i, agent_id in enumerate(counters["agent_ids"]):
            workers.start(  # queued waiters behind each other; every other one releases
                "tests.concurrency.tasks:counter_worker",  # with its write
                agent_id=agent_id,
                resource_ids=counters["resource_ids"],
                cycles=40,
                seed=f"pgb:{i}",
                release_with_write=i % 2 == 0,
                **common,
            )
        for i, agent_id in enumerate(sets["agent_ids"]):
            workers.start(
                "tests.concurrency.tasks:lock_set_worker",
                agent_id=agent_id,
                resource_ids=sets["resource_ids"],
                cycles=20,
                seed=f"pgbset:{i}",
                **common,
            )
        for i, agent_id in enumerate(path_agents):
            workers.start(
                "tests.concurrency.tasks:path_worker",
                agent_id=agent_id,
                folder_id=folder.pk,
                file_ids=[f.pk for f in files],
                cycles=20,
                seed=f"pgbpath:{i}",
                **common,
            )
        while not workers.poll(timeout=1.0):
            assert time.monotonic() - began < DEADLINE, "workers through pgbouncer did not finish"
            monitor_sweep()  # the parent, connected directly, plays the monitor
        results = workers.results(timeout=10)
    counter_results, set_results, path_results = results[:3], results[3:5], results[5:]

    # Lock cycles: no update lost, no two holds of a counter overlapping.
    writes = check_counter_history(
        counter_history(resource_ids=counters["resource_ids"]), counter_results
    )
    assert sum(writes.values()) == 3 * 40
    assert sum(r["queued"] for r in counter_results) > 0  # some waited in the queue
    # Lock sets: every counter of every set incremented once per set.
    check_counter_history(counter_history(resource_ids=sets["resource_ids"]), set_results)
    assert LockSet.objects.count() == 2 * 20
    # Folder locks: the folder's holds never overlap a file's, nothing lost.
    holds = check_folder_holds(folder.pk, [f.pk for f in files])
    for res in Resource.objects.filter(pk__in=holds):
        written = sum(r["writes"].get(res.pk, 0) for r in path_results)
        assert (res.value or 0, res.version) == (written, written)
    assert not Lock.objects.filter(released_at__isnull=True).exists()
    assert not Conflict.objects.exists()

    # It all went through PgBouncer, and its two server connections served every client.
    stats = {row["database"]: row for row in _admin(pgbouncer, user, "SHOW STATS") or []}
    transactions = stats[name]["total_xact_count"]
    assert transactions > 3 * 40 * 2, stats[name]
    servers = [
        row for row in _admin(pgbouncer, user, "SHOW SERVERS") or [] if row["database"] == name
    ]
    assert 0 < len(servers) <= POOL_SIZE, servers
    print(
        f"\nthrough pgbouncer: {transactions} transactions of {len(agent_ids)} processes on "
        f"{len(servers)} server connections in {time.monotonic() - began:.1f}s"
    )
