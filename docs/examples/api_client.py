"""A minimal agent that uses the Orchestrator API through its Python client (docs/api.md).

    TOKEN=... python docs/examples/api_client.py [http://127.0.0.1:8000] [resource]

It adds one to a counter resource the careful way: take the exclusive lock
(waiting in the queue, by long polls, while somebody holds it), read, write with
the lock's fencing token and the version it read, release. The client
(``orchestrator_client``, in client/) is installed with the project.
"""

from __future__ import annotations

import os
import sys

from orchestrator_client import Client


def increment(base: str, token: str, name: str) -> int:
    """Add one to the counter ``name`` (created at 0 if missing); the version written."""
    with Client(base, token) as client:
        client.ensure_resource(name, 0)
        # The lease is renewed in the background while the block runs. Had it been
        # lost (a long pause), write() would raise LeaseLost and send nothing.
        with client.lock(name, ttl=30) as lock:
            state = lock.read()
            return lock.write(state.value + 1, expected_version=state.version)


if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    name = sys.argv[2] if len(sys.argv) > 2 else "example-counter"
    print("version", increment(base, os.environ["TOKEN"], name))
