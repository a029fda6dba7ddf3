"""Event ids in commit order, enforced by PostgreSQL itself.

A BEFORE INSERT trigger takes a transaction-level advisory lock and only then
draws the event's id from the sequence. The lock is held until commit, so ids
are handed out in the order their transactions commit: a reader that has
seen id N never later sees a new id below N appear. (The column default also
draws a value before the trigger runs; those are discarded, leaving gaps.)
"""

from django.db import migrations

LOCK_KEY = 1330791240  # orchestrator.core.events.EVENT_LOG_LOCK_KEY ("ORCH")

# One statement each (RunSQL would split a single string at the semicolons of the body).
CREATE = [
    f"""
CREATE OR REPLACE FUNCTION core_event_commit_order() RETURNS trigger AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({LOCK_KEY});
    NEW.id := nextval(pg_get_serial_sequence('core_event', 'id')::regclass);
    RETURN NEW;
END
$$ LANGUAGE plpgsql
""",
    "DROP TRIGGER IF EXISTS core_event_commit_order ON core_event",
    """
CREATE TRIGGER core_event_commit_order BEFORE INSERT ON core_event
    FOR EACH ROW EXECUTE FUNCTION core_event_commit_order()
""",
]

DROP = [
    "DROP TRIGGER IF EXISTS core_event_commit_order ON core_event",
    "DROP FUNCTION IF EXISTS core_event_commit_order()",
]


class Migration(migrations.Migration):
    dependencies = [("core", "0001_initial")]
    operations = [migrations.RunSQL(CREATE, DROP)]
