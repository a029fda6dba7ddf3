"""The live feed with a view (ws/events/?view=...): a page's snapshot is one page of
rows, a snapshot message changes the view, a bad view is refused with a code."""

from __future__ import annotations

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async as sync_to_async
from django.db import connections

from orchestrator.core.models import Resource
from tests import factories
from tests.dashboard.test_consumer import connect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    yield
    await sync_to_async(connections.close_all)()


def board_of(count: int) -> None:
    team = factories.team(name="bulk")
    Resource.objects.bulk_create(
        Resource(name=f"res-{i:04d}", team=team, value=i) for i in range(count)
    )


async def test_a_view_snapshot_carries_a_page_and_a_message_changes_the_page() -> None:
    await sync_to_async(board_of)(300)
    communicator = await connect("/ws/events/?view=resources&size=50")
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "snapshot"
    assert len(frame["state"]["resources"]) == 50
    assert frame["view"]["total"] == 300 and frame["view"]["pages"] == 6
    await communicator.send_json_to(
        {"type": "snapshot", "view": {"view": "resources", "q": "res-02", "page": 2, "size": 50}}
    )
    frame = await communicator.receive_json_from(timeout=5)
    names = sorted(r["name"] for r in frame["state"]["resources"].values())
    assert names == [f"res-{i:04d}" for i in range(250, 300)]
    assert frame["view"]["params"] == {"name": "resources", "q": "res-02", "page": 2}
    # Without a view, the whole board, as before.
    whole = await connect("/ws/events/")
    assert len((await whole.receive_json_from(timeout=5))["state"]["resources"]) == 300
    await communicator.disconnect()
    await whole.disconnect()


async def test_a_bad_view_is_an_error_frame_and_the_smallest_view() -> None:
    await sync_to_async(board_of)(5)
    communicator = await connect("/ws/events/?view=resources&size=5000")
    error = await communicator.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["error"] == "invalid_view"
    assert error["detail"].startswith("size:")
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["view"]["name"] == "nav" and snapshot["state"]["resources"] == {}
    for bad in ({"view": "graph", "team": "red"}, "resources", {"view": "all"}):
        await communicator.send_json_to({"type": "snapshot", "view": bad})
        error = await communicator.receive_json_from(timeout=5)
        assert error["error"] == "invalid_view", bad
    await communicator.disconnect()
