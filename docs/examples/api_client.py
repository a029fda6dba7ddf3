"""A minimal agent that uses the Orchestrator HTTP API (docs/api.md).

    TOKEN=... python docs/examples/api_client.py [http://127.0.0.1:8000] [resource]

It adds one to a counter resource the careful way: take the exclusive lock
(waiting in the queue if somebody holds it), read, write with the lock's fencing
token and the version it read, release. Uses httpx (installed with the project).
"""

from __future__ import annotations

import os
import sys

import httpx


def increment(base: str, token: str, name: str) -> int:
    with httpx.Client(
        base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=40
    ) as api:
        created = api.post("/resources", json={"name": name, "value": 0})
        if created.status_code not in (201, 409):  # 409 name_taken: it exists already
            created.raise_for_status()
        answer = api.post("/locks", json={"resource": name, "ttl": 30, "wait": True})
        if answer.status_code == 202:  # queued: long-poll until granted
            request_id = answer.json()["request_id"]
            while True:
                polled = api.get(f"/lock-requests/{request_id}", params={"wait": 25}).json()
                if polled["status"] == "granted":
                    lock = polled["lock"]
                    break
                if polled["status"] != "waiting":
                    raise SystemExit(f"the request ended: {polled}")
        else:
            answer.raise_for_status()
            lock = answer.json()
        try:
            state = api.get(f"/resources/{name}").json()
            written = api.put(
                f"/resources/{name}",
                json={
                    "value": state["value"] + 1,
                    "expected_version": state["version"],
                    "fence": lock["fence"],
                },
            )
            if written.status_code != 200:  # e.g. 409 stale_fence if the lease ran out
                raise SystemExit(f"write refused: {written.json()}")
            return written.json()["version"]
        finally:
            api.delete(f"/locks/{lock['id']}")


if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    name = sys.argv[2] if len(sys.argv) > 2 else "example-counter"
    print("version", increment(base, os.environ["TOKEN"], name))
