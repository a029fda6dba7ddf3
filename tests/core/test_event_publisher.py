"""The event publisher: committed events go to the channel layer from a thread of their
own, coalesced per window without holding back the first events after a quiet spell."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator.core import events

WINDOW = 0.5  # long enough that scheduling delays on a busy machine cannot blur it


class RecordingLayer:
    def __init__(self) -> None:
        self.sends: list[tuple[float, str, list[int]]] = []

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.sends.append((time.monotonic(), group, [e["id"] for e in message["events"]]))


@pytest.fixture
def layer(monkeypatch) -> RecordingLayer:
    recording = RecordingLayer()
    # The publisher's thread looks the layer up when it starts: patch before submitting.
    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *a, **k: recording)
    monkeypatch.setattr(events, "PUBLISH_WINDOW", WINDOW)
    return recording


def message(event_id: int, team: int | None = None) -> dict[str, Any]:
    return {"id": event_id, "kind": "test.event", "team": team, "payload": {}}


def wait_for_sends(layer: RecordingLayer, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(layer.sends) < count:
        assert time.monotonic() < deadline, layer.sends
        time.sleep(0.01)


def test_a_lone_event_is_pushed_at_once_not_after_the_window(layer) -> None:
    publisher = events._Publisher()
    submitted = time.monotonic()
    publisher.submit([message(1)])
    wait_for_sends(layer, 1)
    ((pushed_at, group, ids),) = layer.sends
    assert (group, ids) == (events.ALL_EVENTS_GROUP, [1])
    assert pushed_at - submitted < WINDOW / 2


def test_events_committed_within_the_window_share_one_push_at_its_end(layer) -> None:
    publisher = events._Publisher()
    publisher.submit([message(1, team=7)])
    wait_for_sends(layer, 2)
    for event_id in (2, 3, 4):
        publisher.submit([message(event_id, team=7)])
    wait_for_sends(layer, 4)
    time.sleep(WINDOW)  # nothing else comes
    assert [(group, ids) for _, group, ids in layer.sends] == [
        ("events", [1]),
        ("team.7", [1]),
        ("events", [2, 3, 4]),
        ("team.7", [2, 3, 4]),
    ]
    first, burst = layer.sends[0][0], layer.sends[2][0]
    assert burst - first >= WINDOW * 0.9


def test_a_flush_ends_the_window(layer) -> None:
    publisher = events._Publisher()
    publisher.submit([message(1)])
    wait_for_sends(layer, 1)
    publisher.submit([message(2)])
    began = time.monotonic()
    assert publisher.flush(timeout=5)
    assert time.monotonic() - began < WINDOW / 2
    assert [ids for _, _, ids in layer.sends] == [[1], [2]]
