"""The event log: written with the change, pushed only after commit."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import transaction

from orchestrator.core import events
from orchestrator.core.errors import Conflicting
from orchestrator.core.events import event_emit, events_after, service
from orchestrator.core.models import Event, Resource
from orchestrator.core.resources import resource_create
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def test_event_emit_outside_a_service_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        event_emit("x")


def test_services_refuse_to_nest() -> None:
    with transaction.atomic(), pytest.raises(RuntimeError):
        resource_create(name="nested")


def test_a_refused_service_leaves_neither_rows_nor_events_nor_pushes() -> None:
    resource_create(name="doc")
    before = Event.objects.count()
    with mock.patch.object(events, "publish") as publish, pytest.raises(Conflicting):
        resource_create(name="doc")
    assert Event.objects.count() == before
    assert Resource.objects.count() == 1
    publish.assert_not_called()


def test_events_are_pushed_after_commit_with_their_ids() -> None:
    team = factories.team()
    seen: list[list[dict]] = []

    def capture(messages):
        # By the time the push happens, the rows are committed and visible.
        assert Event.objects.filter(id=messages[0]["id"]).exists()
        seen.append(list(messages))

    with mock.patch.object(events, "publish", side_effect=capture):
        resource_create(name="doc", team=team)
    (batch,) = seen
    (message,) = batch
    assert message["kind"] == "resource.created"
    assert message["team"] == team.pk
    assert message["payload"]["resource"] == "doc"


def test_several_events_of_one_service_get_increasing_ids() -> None:
    @service
    def three():
        for i in range(3):
            event_emit("test.event", payload={"i": i})

    three()
    rows = list(Event.objects.filter(kind="test.event").order_by("id"))
    assert [r.payload["i"] for r in rows] == [0, 1, 2]
    assert [e.pk for e in events_after(rows[0].pk)] == [rows[1].pk, rows[2].pk]


def test_a_channel_layer_failure_does_not_fail_the_service(settings) -> None:
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},  # nothing listens there
        }
    }
    channel_layers.backends.clear()
    try:
        with mock.patch.object(events.logger, "warning") as warning:
            resource_create(name="doc")
            assert events.publish_flush()
    finally:
        channel_layers.backends.clear()
    assert Resource.objects.filter(name="doc").exists()
    warning.assert_called_once()


def test_event_ids_are_drawn_in_commit_order() -> None:
    """A second writer waits for the first to commit before it draws an id."""
    import threading
    import time

    from django.db import connection, connections

    first_inserted, release_first = threading.Event(), threading.Event()
    ids: dict[str, int] = {}

    def first() -> None:
        with transaction.atomic():
            ids["first"] = Event.objects.create(kind="t.first", actor="test").pk
            first_inserted.set()
            release_first.wait(10)
        connections.close_all()

    def second() -> None:
        first_inserted.wait(10)
        with transaction.atomic():
            ids["second"] = Event.objects.create(kind="t.second", actor="test").pk
        connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    # Wait (with a deadline) until the second writer blocks on the event log's lock.
    deadline = time.monotonic() + 10
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND wait_event = 'advisory' AND datname = current_database()"
            )
            if cursor.fetchone()[0] == 1:
                break
        assert time.monotonic() < deadline, "the second insert never waited"
        time.sleep(0.01)
    assert "second" not in ids
    release_first.set()
    for thread in threads:
        thread.join(10)
    assert ids["second"] > ids["first"]
