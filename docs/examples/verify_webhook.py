"""Check the signature of an Orchestrator webhook (docs/notifications.md).

The receiver passes the webhook's secret, the ``Orchestrator-Signature`` header and
the raw request body, as bytes, before parsing it. The test suite runs this file
(tests/core/test_notifications.py), and docs/notifications.md shows the same code.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TOLERANCE = 300  # seconds: an older signature is refused (a replayed delivery)


def verify(secret: str, header: str, body: bytes, tolerance: int = TOLERANCE) -> bool:
    """True if ``header`` (``t=<unix time>,v1=<hex>``) signs ``body`` with ``secret``."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp, signature = int(fields["t"]), fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)
