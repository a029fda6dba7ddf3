"""The scripted backend: deterministic agents for demos, tests and benchmarks.

Config (agents.config.ScriptedConfig)::

    {"script": [{"tool": "acquire", "args": {"resource": "slot-{agent}"}}, ...],
     "seed": 7, "think": [0.0, 0.2], "loop": false,
     "retries": 3, "backoff": [0.05, 1.0]}

One script entry is executed per step; ``tool`` is any tool of agents/tools.py
(``{"tool": "acquire_all", "args": {"resources": ["a", "b"]}}`` locks both, all or
nothing). Arguments may use placeholders, so that a script behaves like a careful
model:

* ``"{agent}"`` inside strings: the agent's name;
* ``{"$choice": [a, b, ...]}``: one of the options, chosen with the seeded RNG;
* ``"$version"``: the version seen by the agent's latest read of the resource: a
  ``read``, or a grant (``acquire``, and each lock of ``acquire_all``, carry the value
  and version as of the grant);
* ``{"$inc": n}``: the value of that latest read plus ``n``.

**Refused calls.** A call whose result is not ok (a write refused, a lock wait
aborted or expired, an approval rejected) is retried, at most ``retries`` times
(the entry's own ``"retries"``, else the config's, else 3), and before each retry
the agent backs off: ``base * 2 ** (n - 1)`` seconds for the n-th retry, at most
``cap``, times a factor in [0.5, 1) drawn from the seeded RNG (``backoff``:
``[base, cap]``). How it retries:

* a write refused for a stale version or because the agent holds no lock (or
  approved, but no longer applicable): a fresh read, then the same write;
* a write refused for a stale fencing token (the agent's lock ended: lease
  expired, revoked): back to the entry that acquired that lock (an ``acquire`` of
  it, or an ``acquire_all`` naming it), to take it again;
* an aborted wait (deadlock victim, a lock set included): the script starts over;
* anything else: the same entry again.

Some refusals are final, since asking again cannot change the answer: a write
naming a fixed ``expected_version`` (a number, not ``"$version"``) refused as
stale (a booking at version 0 of a slot somebody booked first), and a write an
operator rejected. A retry that goes back runs entries again that it already
passed; its count of refusals is kept until the script gets past the refused
entry, so going back never resets it.

When the retries are used up, or the refusal is final, the entry's
``"on_refused"`` decides: ``"finish"`` (the default) gives up and finishes, the
summary naming the refusal; a number ``n`` goes on with the entry ``n`` places
further (a fallback: another slot to try; a release, then a finish that says
why). Fallbacks only go forward, so every script ends, whatever the services
answer, within a bounded number of steps (unless it loops on purpose).

A release refused because the lock already ended counts as done (retrying it
could never succeed); a call stopped because the run was paused mid-step runs
again, with no refusal counted. Think-times (seconds, from ``think``) and
backoffs are drawn from the same seeded RNG, so races happen reproducibly.

The agent's position is carried in the ids of its tool calls (``s<index>``, and
``s<index>.<refusals>.<refused entry>`` during a retry; ``r...`` for the re-read
before a retried write), so the count of refusals never depends on how much of
the transcript the agent is shown.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from agents.backends.base import Decision, StepContext, ToolCall
from agents.config import ScriptedConfig, ScriptEntry

# A write refused for these is retried after a fresh read ("failed": an approved write
# that could not be applied, the version having moved since).
REREAD_ERRORS = ("version_conflict", "stale_fence", "not_holder", "failed")
DONE_RELEASE_ERRORS = ("lease_lost", "not_holder")  # the lock ended already


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


def read_in(tool: str, args: Any, result: dict[str, Any], resource: Any) -> dict[str, Any] | None:
    """What a call of ``tool`` with ``args`` that answered ``result`` saw of ``resource``
    (its ``value`` and ``version``) if it read it: an ok ``read``, or a grant that
    carries them (``acquire``, each lock of ``acquire_all``); else None. The run checker
    reads the steps' calls the same way (agents/checker.py)."""
    if not isinstance(args, dict) or not result.get("ok"):
        return None
    if tool == "read" and args.get("resource") == resource:
        return result
    if result.get("status") != "granted":
        return None
    if tool == "acquire" and args.get("resource") == resource:
        return result if "version" in result else None
    if tool == "acquire_all":
        for lock in result.get("locks") or []:
            if lock.get("resource") == resource and "version" in lock:
                return lock
    return None


@dataclass(frozen=True)
class Position:
    """Where the agent is in its script: the entry to run, and the refusals it has
    had since it last got past ``refused_at`` (0: not retrying)."""

    index: int
    refusals: int = 0
    refused_at: int = 0

    def tag(self, kind: str = "s") -> str:
        if not self.refusals:
            return f"{kind}{self.index}"
        return f"{kind}{self.index}.{self.refusals}.{self.refused_at}"

    @classmethod
    def parse(cls, tag: str) -> tuple[str, Position]:
        """(kind, position) of a call's tag: kind ``s`` (an entry) or ``r`` (a re-read)."""
        kind, numbers = tag[0], [int(part) for part in tag[1:].split(".")]
        if len(numbers) == 1:  # not retrying
            return kind, cls(numbers[0])
        return kind, cls(*numbers[:3])


@dataclass(frozen=True)
class Move:
    """What to do next: run ``at`` (after re-reading ``reread``), or finish."""

    at: Position | None  # None: finish with ``summary``
    reread: str | None = None
    retry: bool = False  # back off first
    summary: str = "script done"


class ScriptedBackend:
    def __init__(self, config: ScriptedConfig | dict[str, Any]) -> None:
        config = ScriptedConfig.model_validate(config)
        self.script: list[ScriptEntry] = config.script
        self.think = config.think
        self.loop = config.loop
        self.retries = config.retries
        self.backoff = tuple(config.backoff)

    def decide(self, context: StepContext) -> Decision:
        rng = random.Random(context.seed)  # noqa: S311 (a simulation, not security)
        low, high = self.think
        if high > 0:
            time.sleep(rng.uniform(low, high))  # the "model" thinking, seeded
        calls = _calls(context.transcript)
        results = _results(context.transcript)
        move = self._next(calls, results)
        if move.at is None:
            return self._call(context, "finish", {"summary": move.summary}, "end")
        if move.retry:
            time.sleep(self.backoff_seconds(move.at.refusals, rng))
        if move.reread is not None:
            return self._call(context, "read", {"resource": move.reread}, move.at.tag("r"))
        entry = self.script[move.at.index]
        args = self._fill(entry.args, context, rng, calls, results)
        return self._call(context, entry.tool, args, move.at.tag())

    def backoff_seconds(self, retry: int, rng: random.Random) -> float:
        """How long to wait before the ``retry``-th retry (1, 2, ...), seeded."""
        base, cap = self.backoff
        return min(cap, base * 2 ** (retry - 1)) * rng.uniform(0.5, 1.0)

    def _next(self, calls: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> Move:
        if not calls:
            return Move(Position(0))
        last = calls[-1]
        tag = last["id"].split(":")[0]
        if tag == "end":
            return Move(None)
        kind, at = Position.parse(tag)
        if kind == "r":  # the re-read before a retried write is done: the write again
            return Move(at)
        result = results.get(last["id"], {})
        gone = last["name"] == "release" and result.get("error") in DONE_RELEASE_ERRORS
        if result.get("ok") or gone:
            if at.refusals and at.index < at.refused_at:  # going back over passed entries
                return self._advance(Position(at.index + 1, at.refusals, at.refused_at))
            return self._advance(Position(at.index + 1))
        if result.get("error") == "stopped":  # the run was paused mid-step: not a refusal
            return Move(at)
        refused_at = max(at.refused_at, at.index) if at.refusals else at.index
        again = Position(at.index, at.refusals + 1, refused_at)
        entry = self.script[at.index]
        error = result.get("error") or result.get("status") or "refused"
        retries = self.retries if entry.retries is None else entry.retries
        if again.refusals > retries or self._final(last, entry, error):
            return self._fallback(again, last, error)
        if error == "aborted":  # a deadlock victim: its locks are gone, start over
            return Move(Position(0, again.refusals, again.refused_at), retry=True)
        if last["name"] == "write" and error == "stale_fence":
            acquired = self._acquired_at(calls, last["args"].get("resource"))
            if acquired is not None:  # the lock is lost: take it again, then go on
                return Move(Position(acquired, again.refusals, again.refused_at), retry=True)
        if last["name"] == "write" and error in REREAD_ERRORS:
            return Move(again, reread=last["args"].get("resource"), retry=True)
        return Move(again, retry=True)

    def _advance(self, at: Position) -> Move:
        if at.index < len(self.script):
            return Move(at)
        return Move(Position(0)) if self.loop else Move(None)

    @staticmethod
    def _final(call: dict[str, Any], entry: ScriptEntry, error: str) -> bool:
        """A refusal that asking again cannot change: a write at a fixed version refused
        as stale (re-reading does not change the version it names), or a write an
        operator rejected (asking again asks the same person the same question)."""
        if error in ("rejected", "approval_rejected"):  # by an operator, or a standing rule
            return True
        expected = entry.args.get("expected_version")
        fixed = isinstance(expected, int) and not isinstance(expected, bool)
        return call["name"] == "write" and error == "version_conflict" and fixed

    def _fallback(self, at: Position, call: dict[str, Any], error: str) -> Move:
        """The entry's ``on_refused``: give up and finish, or go on further ahead."""
        fallback = self.script[at.index].on_refused
        if fallback == "finish":
            target = call["args"].get("resource")
            what = f"{call['name']} {target}" if target else call["name"]
            times = "once" if at.refusals == 1 else f"{at.refusals} times"
            return Move(None, summary=f"gave up: {what} was refused {times} ({error})")
        return self._advance(Position(at.index + int(fallback)))

    @staticmethod
    def _acquired_at(calls: list[dict[str, Any]], resource: str | None) -> int | None:
        """The script index of the latest ``acquire`` of ``resource``, or of the latest
        ``acquire_all`` that names it, or None."""
        for call in reversed(calls):
            if call["name"] == "acquire":
                took = call["args"].get("resource") == resource
            elif call["name"] == "acquire_all":
                took = resource in (call["args"].get("resources") or [])
            else:
                continue
            kind, at = Position.parse(call["id"].split(":")[0])
            if took and kind == "s":
                return at.index
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
        """The latest result that saw ``resource``'s value and version: a read, or a
        grant that carries them; {} if none."""
        for call in reversed(calls):
            seen = read_in(call["name"], call["args"], results.get(call["id"], {}), resource)
            if seen is not None:
                return seen
        return {}

    @staticmethod
    def _call(context: StepContext, tool: str, args: dict[str, Any], tag: str) -> Decision:
        call_id = f"{tag}:{context.step_number}"
        return Decision(tool_calls=[ToolCall(id=call_id, name=tool, arguments=args)])
