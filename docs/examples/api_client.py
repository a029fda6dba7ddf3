"""A minimal agent that uses the Orchestrator API through its Python client (docs/api.md).

    TOKEN=... python docs/examples/api_client.py [http://127.0.0.1:8000] [resource]

It adds one to a counter resource the careful way, in two requests: take the
exclusive lock (waiting in the queue, by long polls, while somebody holds it; the
grant says the value and version), then write with the lock's fencing token and
that version, releasing the lock in the write's own transaction. The client
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
        # The grant says the value and version: while the lock is held nobody else
        # writes, so no read is needed. release=True ends the lock with the write.
        with client.lock(name, ttl=30) as lock:
            return lock.write(lock.value + 1, expected_version=lock.version, release=True)


if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    name = sys.argv[2] if len(sys.argv) > 2 else "example-counter"
    print("version", increment(base, os.environ["TOKEN"], name))
