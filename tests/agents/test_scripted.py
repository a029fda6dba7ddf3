"""The scripted backend behaves like a careful agent: a refusal that cannot change is
not retried, every retry is bounded and backs off (seeded), and a fallback takes the
agent further on, never back. Driven here without services: each tool call is
answered by a small function, as the runtime would record it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from agents.backends import scripted
from agents.backends.base import StepContext
from agents.backends.scripted import ScriptedBackend
from agents.config import ScriptedConfig, config_messages
from agents.scenarios import booking_script, guest_script, increment_script, transfer_script

Answer = Callable[[str, dict[str, Any]], dict[str, Any]]
OK_READ = {"ok": True, "value": [], "version": 0}
# A grant says the value and version, as a read does.
GRANTED = {"ok": True, "status": "granted", "fence": 1, "value": [], "version": 0}


@pytest.fixture(autouse=True)
def no_sleeping(monkeypatch) -> list[float]:
    """The backoffs the backend asked for, instead of sleeping them."""
    slept: list[float] = []
    monkeypatch.setattr(scripted.time, "sleep", slept.append)
    return slept


def answers(**by_tool: Any) -> Answer:
    """An answer per tool: a result dict, or a function of the call's arguments."""

    def answer(tool: str, args: dict[str, Any]) -> dict[str, Any]:
        found = by_tool.get(tool, {"ok": True})
        return found(args) if callable(found) else found

    return answer


def drive(config: dict[str, Any], answer: Answer, *, limit: int = 200, window: int = 80):
    """Run the agent until it finishes (or ``limit`` steps): its calls as
    (tool, args, result), the last being the finish. The transcript it sees is cut to
    the newest ``window`` messages, as the runtime's is."""
    backend = ScriptedBackend(ScriptedConfig.model_validate(config))
    transcript: list[dict[str, Any]] = []
    made = []
    for number in range(1, limit + 1):
        context = StepContext(
            agent="ann",
            role="",
            goal="",
            config=config,
            transcript=transcript[-window:],
            tools=[],
            step_number=number,
            seed=number,
        )
        (call,) = backend.decide(context).tool_calls
        result = {"ok": True, "status": "finished"} if call.name == "finish" else None
        result = result or answer(call.name, call.arguments)
        made.append((call.name, call.arguments, result))
        transcript += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
        ]
        if call.name == "finish":
            return made
    pytest.fail(f"the agent was still going after {limit} steps: {made[-6:]}")


def tools(made) -> list[str]:
    return [f"{tool} {args.get('resource', '')}".strip() for tool, args, _ in made]


TAKEN = {"ok": False, "error": "version_conflict", "detail": "slot was booked"}


def test_a_guest_whose_slot_is_taken_books_its_next_choice_without_retrying() -> None:
    def write(args):
        return TAKEN if args["resource"] == "a" else {"ok": True, "status": "applied"}

    made = drive({"script": guest_script(["a", "b", "c"])}, answers(acquire=GRANTED, write=write))

    # The booking's write releases its lock; a refused one keeps it, released after.
    assert tools(made) == ["acquire a", "write a", "release a", "acquire b", "write b", "finish"]
    assert [args["release"] for tool, args, _ in made if tool == "write"] == [True, True]
    assert made[-1][1] == {"summary": "booked b"}


def test_a_guest_finds_every_slot_taken_and_finishes_saying_so() -> None:
    made = drive({"script": guest_script(["a", "b"])}, answers(acquire=GRANTED, write=TAKEN))

    assert len(made) == 7  # 3 steps per slot taken, and the finish
    assert made[-1][1] == {"summary": "could not book: a, b taken"}


def test_joined_booking_scripts_leave_a_taken_slot_and_book_the_next() -> None:
    """The fault workload's guests: bookings one after another."""

    def write(args):
        return TAKEN if args["resource"] == "a" else {"ok": True, "status": "applied"}

    script = booking_script("a") + booking_script("b")
    gone = {"ok": False, "error": "not_holder"}  # released with the booking already

    def release(args):
        return gone if args["resource"] == "b" else {"ok": True, "status": "released"}

    made = drive({"script": script}, answers(acquire=GRANTED, write=write, release=release))

    assert [r.get("status") for t, _, r in made if t == "write"] == [None, "applied"]
    assert tools(made)[-2:] == ["release b", "finish"]  # not_holder counts as done
    assert made[-1][1] == {"summary": "script done"}


def test_retries_are_bounded_even_when_every_lock_is_lost() -> None:
    """Every write finds its lock gone (a lease ran out): the agent takes the lock
    again and retries, 3 times, then gives up. Going back to the acquire does not reset
    its count (it used to, and such an agent went on until its step limit)."""
    stale = {"ok": False, "error": "stale_fence", "detail": "your lock ended"}
    made = drive(
        {"script": increment_script("n")},
        answers(acquire={**GRANTED, "value": 0}, write=stale),
    )

    assert tools(made) == ["acquire n", "write n"] * 4 + ["finish"]
    assert made[-1][1] == {"summary": "gave up: write n was refused 4 times (stale_fence)"}


def test_a_stale_version_is_re_read_and_retried_a_bounded_number_of_times() -> None:
    conflict = {"ok": False, "error": "version_conflict", "detail": "moved"}
    config = {"script": increment_script("n"), "retries": 2}
    made = drive(
        config,
        answers(
            acquire={**GRANTED, "value": 0},
            read={"ok": True, "value": 5, "version": 3},
            write=conflict,
        ),
    )

    assert tools(made) == [
        "acquire n",
        "write n",
        "read n",
        "write n",
        "read n",
        "write n",
        "finish",
    ]
    # The first write is based on the grant, the retries on the re-reads.
    writes = [(args["value"], args["expected_version"]) for t, args, _ in made if t == "write"]
    assert writes == [(1, 0), (6, 3), (6, 3)]


def test_the_count_of_refusals_starts_again_once_past_the_refused_entry() -> None:
    """Two rounds, each of whose first write loses its lock: each round gets its own
    retries (after going back, the count stays until the write is passed)."""
    writes = iter(["stale", "ok", "stale", "ok"])

    def write(args):
        if next(writes) == "stale":
            return {"ok": False, "error": "stale_fence"}
        return {"ok": True, "status": "applied"}

    made = drive(
        {"script": increment_script("n") * 2, "retries": 1},
        answers(acquire={**GRANTED, "value": 0}, write=write),
    )

    assert tools(made).count("write n") == 4
    assert made[-1][1] == {"summary": "script done"}


def test_a_deadlock_victim_starts_over_a_bounded_number_of_times() -> None:
    aborted = {"ok": False, "status": "aborted", "error": "aborted", "detail": "victim"}

    def acquire(args):
        return aborted if args["resource"] == "b" else {"ok": True, "status": "granted"}

    script = [
        {"tool": "acquire", "args": {"resource": "a"}},
        {"tool": "acquire", "args": {"resource": "b"}},
    ]
    made = drive({"script": script}, answers(acquire=acquire))

    assert tools(made) == ["acquire a", "acquire b"] * 4 + ["finish"]


def test_a_stale_fence_after_acquire_all_takes_the_whole_set_again() -> None:
    """A write whose lock ended goes back to the acquire_all that took it (a transfer:
    both accounts locked in one call), then on from there."""
    stale = iter([True])

    def write(args):
        if args["resource"] == "b" and next(stale, False):
            return {"ok": False, "error": "stale_fence", "detail": "your lock ended"}
        return {"ok": True, "status": "applied"}

    def acquire_all(args):
        locks = [{"resource": name, "fence": 1, "value": 100, "version": 1} for name in "ab"]
        return {"ok": True, "status": "granted", "locks": locks}

    made = drive(
        {"script": transfer_script("a", "b", 5)}, answers(acquire_all=acquire_all, write=write)
    )

    transfer = ["acquire_all", "write a", "write b"]
    assert tools(made) == [*transfer, *transfer, "release a", "finish"]
    assert made[0][1] == {"resources": ["a", "b"]}
    # The balances come from the grant: no read.
    assert [args["value"] for tool, args, _ in made if tool == "write"] == [95, 105] * 2
    assert [args.get("release") for tool, args, _ in made if tool == "write"] == [None, True] * 2


def test_an_operator_rejection_is_final_and_the_fallback_goes_on() -> None:
    rejected = {"ok": False, "status": "rejected", "detail": "no"}
    acquire, write = increment_script("doc")
    script = [acquire, {**write, "on_refused": 1}, {"tool": "release", "args": {"resource": "doc"}}]
    made = drive({"script": script}, answers(acquire={**GRANTED, "value": 0}, write=rejected))

    assert tools(made) == ["acquire doc", "write doc", "release doc", "finish"]


def test_a_call_stopped_by_a_pause_is_run_again_without_counting() -> None:
    stops = iter([True, True, True, True, False])

    def read(args):
        if next(stops):
            return {"ok": False, "error": "stopped", "detail": "the run was paused"}
        return {"ok": True, "value": 0, "version": 0}

    made = drive(
        {"script": [{"tool": "read", "args": {"resource": "n"}}], "retries": 0}, answers(read=read)
    )

    assert tools(made) == ["read n"] * 5 + ["finish"]
    assert made[-1][1] == {"summary": "script done"}


def test_backoff_doubles_up_to_its_cap_and_is_the_same_for_the_same_seed(no_sleeping) -> None:
    refused = {"ok": False, "error": "busy"}
    config = {
        "script": [{"tool": "acquire", "args": {"resource": "n"}}],
        "retries": 5,
        "backoff": [0.1, 0.4],
    }
    drive(config, answers(acquire=refused))
    first = list(no_sleeping)
    no_sleeping.clear()
    drive(config, answers(acquire=refused))

    assert first == no_sleeping and len(first) == 5  # one before each retry, seeded
    for delay, full in zip(first, [0.1, 0.2, 0.4, 0.4, 0.4], strict=True):
        assert full / 2 <= delay < full


def test_the_position_is_kept_in_the_call_ids_not_in_the_transcript_window() -> None:
    """An agent shown only its last turn still counts its refusals."""
    stale = {"ok": False, "error": "stale_fence"}
    made = drive(
        {"script": increment_script("n")},
        answers(acquire={**GRANTED, "value": 0}, write=stale),
        window=2,
    )

    assert made[-1][0] == "finish" and len(made) <= 20


@pytest.mark.parametrize(
    "config, message",
    [
        ({"script": [{"tool": "read", "on_refused": 0}]}, "on_refused"),
        ({"script": [{"tool": "read", "on_refused": 2}]}, "from 1 to 1"),
        ({"script": [{"tool": "read", "on_refused": True}]}, "on_refused"),
        ({"script": [{"tool": "read", "on_refused": "retry"}]}, "on_refused"),
        ({"script": [{"tool": "read", "retries": 21}]}, "script[0].retries"),
        ({"script": [{"tool": "read", "on_refuse": 1}]}, "unknown key(s) on_refuse"),
        ({"script": [{"tool": "read"}], "retries": -1}, "'retries'"),
        ({"script": [{"tool": "read"}], "backoff": [2, 1]}, "'backoff'"),
        ({"script": [{"tool": "read"}], "backoff": 1}, "'backoff'"),
    ],
)
def test_bad_retry_settings_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ScriptedConfig.model_validate(config)
    assert message in " ".join(config_messages(raised.value, ScriptedConfig))


def test_good_retry_settings_pass() -> None:
    config = {
        "script": [{"tool": "write", "args": {}, "retries": 0, "on_refused": 2}, {"tool": "read"}],
        "retries": 5,
        "backoff": [0, 2.5],
    }
    assert ScriptedConfig.model_validate(config).retries == 5
    ScriptedConfig.model_validate({"script": guest_script(["a", "b", "c"])})


def test_a_grant_counts_as_the_latest_read_and_a_later_read_replaces_it() -> None:
    script = [
        {"tool": "acquire", "args": {"resource": "n"}},
        {"tool": "write", "args": {"resource": "n", "value": {"$inc": 1},
                                   "expected_version": "$version"}},
        {"tool": "read", "args": {"resource": "n"}},
        {"tool": "write", "args": {"resource": "n", "value": {"$inc": 1},
                                   "expected_version": "$version"}},
        {"tool": "acquire_all", "args": {"resources": ["m", "n"]}},
        {"tool": "write", "args": {"resource": "m", "value": {"$inc": 1},
                                   "expected_version": "$version"}},
    ]  # fmt: skip

    def acquire_all(args):
        locks = [{"resource": "m", "fence": 2, "value": 40, "version": 4},
                 {"resource": "n", "fence": 3, "value": 50, "version": 5}]  # fmt: skip
        return {"ok": True, "status": "granted", "locks": locks}

    made = drive(
        {"script": script},
        answers(
            acquire={**GRANTED, "value": 7, "version": 2},
            read={"ok": True, "value": 9, "version": 3},
            acquire_all=acquire_all,
            write={"ok": True, "status": "applied"},
        ),
    )

    writes = [(args["value"], args["expected_version"]) for t, args, _ in made if t == "write"]
    assert writes == [(8, 2), (10, 3), (41, 4)]
