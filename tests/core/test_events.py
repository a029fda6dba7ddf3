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


def test_a_commit_is_pushed_after_commit_as_a_wake_up_with_its_largest_id() -> None:
    team = factories.team()
    seen: list[int] = []

    def capture(last_id):
        # By the time the push happens, the rows are committed and visible.
        assert Event.objects.filter(id=last_id).exists()
        seen.append(last_id)

    with mock.patch.object(events, "publish", side_effect=capture):
        resource_create(name="doc", team=team)
    (last_id,) = seen
    event = Event.objects.get(pk=last_id)
    assert (event.kind, event.team_id, event.payload["resource"]) == (
        "resource.created",
        team.pk,
        "doc",
    )
    assert last_id == Event.objects.latest("pk").pk


def test_several_events_of_one_service_get_increasing_ids() -> None:
    @service
    def three():
        for i in range(3):
            event_emit("step.failed", payload={"error": f"error {i}"})

    three()
    rows = list(Event.objects.filter(kind="step.failed").order_by("id"))
    assert [r.payload["error"] for r in rows] == ["error 0", "error 1", "error 2"]
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


def _advisory_lock_waiters() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )
        return cursor.fetchone()[0]


def _replay(start: int) -> list[int]:
    return [event.id for event in events_after(start)]


def _timeline(start: int) -> list[int]:
    from orchestrator.dashboard.selectors.timeline import events_filtered

    return sorted(event.id for event in events_filtered() if event.id > start)


@pytest.mark.parametrize("reader", [_replay, _timeline], ids=["replay", "timeline"])
def test_writers_share_the_event_log_and_a_reader_waits_for_both(reader) -> None:
    """Two writers insert events side by side (the first still open while the second
    commits); a reader following ids (a replay, the timeline page) waits until the
    first has committed, then sees both, in id order."""
    import threading

    from django.db import connection

    from tests.concurrency.processes import wait_until

    deadline = 20
    first_inserted, second_done, release = threading.Event(), threading.Event(), threading.Event()
    read: list[int] = []
    start = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0

    def first_writer() -> None:
        try:
            with transaction.atomic():
                Event.objects.create(kind="test.first", actor="test")
                first_inserted.set()
                release.wait(deadline)
        finally:
            connection.close()

    def second_writer() -> None:
        try:
            with transaction.atomic():
                Event.objects.create(kind="test.second", actor="test")
            second_done.set()
        finally:
            connection.close()

    def read_log() -> None:
        try:
            read.extend(reader(start))
        finally:
            connection.close()

    threads = [threading.Thread(target=first_writer)]
    threads[0].start()
    try:
        assert first_inserted.wait(deadline)
        threads.append(threading.Thread(target=second_writer))
        threads[1].start()
        assert second_done.wait(deadline), "the second writer waited for the first"
        threads.append(threading.Thread(target=read_log))
        threads[2].start()
        # The reader parks on the barrier (a TimeoutError here if it did not wait).
        wait_until(_advisory_lock_waiters, timeout=deadline, what="the reader waiting")
        assert read == []
    finally:
        release.set()
        for thread in threads:
            thread.join(deadline)
    kinds = list(Event.objects.filter(id__in=read).order_by("id").values_list("kind", flat=True))
    assert kinds == ["test.first", "test.second"]
    assert read == sorted(read)
