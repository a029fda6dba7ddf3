"""The scripted backend: deterministic agents for demos, tests and benchmarks.

Config (validated by orchestrator.core.backends.validate_scripted)::

    {"script": [{"tool": "acquire", "args": {"resource": "slot-{agent}"}}, ...],
     "seed": 7, "think": [0.0, 0.2], "loop": false}

One script entry is executed per step. Arguments may use placeholders, so
that a script behaves like a careful model:

* ``"{agent}"`` inside strings: the agent's name;
* ``{"$choice": [a, b, ...]}``: one of the options, chosen with the seeded RNG;
* ``"$version"``: the version seen by the agent's latest read of the resource;
* ``{"$inc": n}``: the value of that latest read plus ``n``.

When a call fails the script does not advance: a refused write (stale
version, not the holder) is followed by a fresh read and the same write again;
a write refused for a stale fencing token (the agent's lock ended: lease
expired, revoked) goes back to the entry that acquired that lock, to take it
again; a release refused because the lock already ended counts as done; an
aborted wait (deadlock victim) starts the script over; after 20 failures in a
row the agent gives up and finishes. Think-times (seconds, from ``think``)
are drawn from the same seeded RNG, so races happen reproducibly.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from agents.backends.base import Decision, StepContext, ToolCall

MAX_RETRIES = 20


def _results(transcript: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for message in transcript:
        if message.get("role") == "tool":
            try:
                out[message["tool_call_id"]] = json.loads(message.get("content") or "{}")
            except ValueError:
                out[message["tool_call_id"]] = {}
    return out


def _calls(transcript: list[dict[str, Any]]) -> list[dict[str, Any]]:
    calls = []
    for message in transcript:
        for call in message.get("tool_calls") or []:
            calls.append(
                {
                    "id": call["id"],
                    "name": call["function"]["name"],
                    "args": json.loads(call["function"]["arguments"] or "null") or {},
                }
            )
    return calls


class ScriptedBackend:
    def __init__(self, config: dict[str, Any]) -> None:
        self.script: list[dict[str, Any]] = config["script"]
        self.think = config.get("think", [0, 0])
        self.loop = bool(config.get("loop", False))

    def decide(self, context: StepContext) -> Decision:
        rng = random.Random(context.seed)  # noqa: S311 (a simulation, not security)
        low, high = self.think
        if high > 0:
            time.sleep(rng.uniform(low, high))  # the "model" thinking, seeded
        calls = _calls(context.transcript)
        results = _results(context.transcript)
        index, retry_read = self._next(calls, results)
        if index is None:
            return self._call(context, "finish", {"summary": "script done"}, "end")
        if retry_read is not None:
            return self._call(context, "read", {"resource": retry_read}, f"r{index}")
        entry = self.script[index]
        args = self._fill(entry.get("args", {}), context, rng, calls, results)
        return self._call(context, entry["tool"], args, f"s{index}")

    def _next(
        self, calls: list[dict[str, Any]], results: dict[str, dict[str, Any]]
    ) -> tuple[int | None, str | None]:
        """The script index to run now, and a resource to re-read first (or None)."""
        if not calls:
            return 0, None
        last = calls[-1]
        tag = last["id"].split(":")[0]
        if tag == "end":
            return None, None
        index = int(tag[1:])
        if tag.startswith("r"):  # a re-read after a refused write: retry the entry
            return index, None
        result = results.get(last["id"], {})
        # A release refused because the lock already ended (its lease ran out) has
        # nothing left to do: retrying it could never succeed.
        gone = last["name"] == "release" and result.get("error") in ("lease_lost", "not_holder")
        if result.get("ok") or gone:
            index += 1
            if index >= len(self.script):
                return (0, None) if self.loop else (None, None)
            return index, None
        failures = 0
        for call in reversed(calls):
            if call["id"].startswith(f"s{index}:") and not results.get(call["id"], {}).get("ok"):
                failures += 1
            elif not call["id"].startswith(f"r{index}:"):
                break
        if failures >= MAX_RETRIES:
            return None, None
        if result.get("status") == "aborted" or result.get("error") == "aborted":
            return 0, None  # a deadlock victim: its locks are gone, start over
        if last["name"] == "write" and result.get("error") == "stale_fence":
            acquired = self._acquired_at(calls, last["args"].get("resource"))
            if acquired is not None:  # the lock is lost: take it again, then go on
                return acquired, None
        if last["name"] == "write" and result.get("error") in (
            "version_conflict",
            "stale_fence",
            "not_holder",
        ):
            return index, last["args"].get("resource")
        return index, None

    @staticmethod
    def _acquired_at(calls: list[dict[str, Any]], resource: str | None) -> int | None:
        """The script index of the latest ``acquire`` of ``resource``, or None."""
        for call in reversed(calls):
            if call["name"] == "acquire" and call["args"].get("resource") == resource:
                tag = call["id"].split(":")[0]
                if tag.startswith("s"):
                    return int(tag[1:])
        return None

    def _fill(
        self,
        args: Any,
        context: StepContext,
        rng: random.Random,
        calls: list[dict[str, Any]],
        results: dict[str, dict[str, Any]],
        resource: str | None = None,
    ) -> Any:
        if isinstance(args, dict):
            if "$choice" in args:
                return self._fill(rng.choice(args["$choice"]), context, rng, calls, results)
            if "$inc" in args:
                return (self._last_read(resource, calls, results).get("value") or 0) + args["$inc"]
            target = args.get("resource")
            target = self._fill(target, context, rng, calls, results) if target else None
            return {
                key: target
                if key == "resource"
                else self._fill(value, context, rng, calls, results, target)
                for key, value in args.items()
            }
        if isinstance(args, list):
            return [self._fill(item, context, rng, calls, results, resource) for item in args]
        if args == "$version":
            return self._last_read(resource, calls, results).get("version", 0)
        if isinstance(args, str):
            return args.replace("{agent}", context.agent)
        return args

    @staticmethod
    def _last_read(
        resource: str | None, calls: list[dict[str, Any]], results: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        for call in reversed(calls):
            if call["name"] == "read" and call["args"].get("resource") == resource:
                result = results.get(call["id"], {})
                if result.get("ok"):
                    return result
        return {}

    @staticmethod
    def _call(context: StepContext, tool: str, args: dict[str, Any], tag: str) -> Decision:
        call_id = f"{tag}:{context.step_number}"
        return Decision(tool_calls=[ToolCall(id=call_id, name=tool, arguments=args)])
