"""A child process that holds a lock through the client, for the lease-lost test.

    python tests/client/holder.py BASE TOKEN RESOURCE TTL

Prints ``held FENCE`` once the lock is granted (its lease renewed by the client's
thread from then on), then waits for a line on stdin, writes ``"holder"`` through
the lock and prints ``applied VERSION`` or ``refused CLASS CODE``.
"""

from __future__ import annotations

import sys

from orchestrator_client import Client, OrchestratorError


def main() -> None:
    base, token, resource, ttl = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with Client(base, token) as client:
        lock = client.lock(resource, ttl=ttl).acquire()
        print("held", lock.fence, flush=True)
        sys.stdin.readline()
        try:
            version = lock.write("holder")
        except OrchestratorError as exc:
            print("refused", type(exc).__name__, exc.code, flush=True)
        else:
            print("applied", version, flush=True)


if __name__ == "__main__":
    main()
