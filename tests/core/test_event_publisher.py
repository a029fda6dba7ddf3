"""The event publisher: wake-ups (the largest committed event id) go to the channel
layer's one group from a thread of their own, coalesced per window without holding
back the first commit after a quiet spell."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator.core import events

WINDOW = 0.5  # long enough that scheduling delays on a busy machine cannot blur it


class RecordingLayer:
    def __init__(self) -> None:
        self.sends: list[tuple[float, str, int]] = []

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert set(message) == {"type", "last_id"}  # a wake-up, not the events
        self.sends.append((time.monotonic(), group, message["last_id"]))


@pytest.fixture
def layer(monkeypatch) -> RecordingLayer:
    recording = RecordingLayer()
    # The publisher's thread looks the layer up when it starts: patch before submitting.
    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *a, **k: recording)
    monkeypatch.setattr(events, "PUBLISH_WINDOW", WINDOW)
    return recording


def wait_for_sends(layer: RecordingLayer, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(layer.sends) < count:
        assert time.monotonic() < deadline, layer.sends
        time.sleep(0.01)


def test_a_lone_event_is_pushed_at_once_not_after_the_window(layer) -> None:
    publisher = events._Publisher()
    submitted = time.monotonic()
    publisher.submit(1)
    wait_for_sends(layer, 1)
    ((pushed_at, group, last_id),) = layer.sends
    assert (group, last_id) == (events.ALL_EVENTS_GROUP, 1)
    assert pushed_at - submitted < WINDOW / 2


def test_commits_within_the_window_share_one_wake_up_at_its_end(layer) -> None:
    publisher = events._Publisher()
    publisher.submit(1)
    wait_for_sends(layer, 1)
    for event_id in (4, 2, 3):  # committed by several transactions, in any order
        publisher.submit(event_id)
    wait_for_sends(layer, 2)
    time.sleep(WINDOW)  # nothing else comes
    assert [(group, last_id) for _, group, last_id in layer.sends] == [
        ("events", 1),
        ("events", 4),  # one group only: no consumer joins a team's
    ]
    first, burst = layer.sends[0][0], layer.sends[1][0]
    assert burst - first >= WINDOW * 0.9


def test_a_flush_ends_the_window(layer) -> None:
    publisher = events._Publisher()
    publisher.submit(1)
    wait_for_sends(layer, 1)
    publisher.submit(2)
    began = time.monotonic()
    assert publisher.flush(timeout=5)
    assert time.monotonic() - began < WINDOW / 2
    assert [last_id for _, _, last_id in layer.sends] == [1, 2]
