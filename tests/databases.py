"""The DATABASE_URL of the test database, for the processes that tests start."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote


def database_url(settings_db: dict[str, Any], application_name: str = "") -> str:
    """A DATABASE_URL for the Django database settings ``settings_db``.

    The host may be a unix socket directory (the embedded PostgreSQL's): it is
    percent-encoded, which dj-database-url reads back as a socket path.
    """
    user = quote(settings_db.get("USER") or "", safe="")
    password = settings_db.get("PASSWORD") or ""
    auth = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    host = quote(str(settings_db.get("HOST") or "127.0.0.1"), safe="")
    port = settings_db.get("PORT") or 5432
    query = f"?application_name={application_name}" if application_name else ""
    return f"postgres://{auth}{host}:{port}/{settings_db['NAME']}{query}"
