"""Writers of the event log no longer wait for each other.

Migration 0002's trigger took the event log's advisory lock exclusively before
drawing each event id and held it until commit, so the transactions that
write events committed one at a time. Now the trigger takes it *shared*:
writers still hold it from drawing an id until they commit, but side by side.
Readers that follow ids read up to the largest id, read while holding it
exclusively (``events.last_event_id``): that waits until every writer that
has drawn an id has committed, and every id drawn after it is larger, so a
reader that has seen id N still never later sees a new id below N appear. Measured by bench/locks.py, in turns
in one run: 8 processes on 10,000 cold resources +17%, on 10 hot ones +8%.
"""

from django.db import migrations

LOCK_KEY = 1330791240  # orchestrator.core.events.EVENT_LOG_LOCK_KEY ("ORCH")

TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION core_event_commit_order() RETURNS trigger AS $$
BEGIN
    PERFORM {lock}({key});
    NEW.id := nextval(pg_get_serial_sequence('core_event', 'id')::regclass);
    RETURN NEW;
END
$$ LANGUAGE plpgsql
"""


class Migration(migrations.Migration):
    dependencies = [("core", "0006_drop_redundant_indexes")]
    operations = [
        migrations.RunSQL(
            [TRIGGER_FUNCTION.format(lock="pg_advisory_xact_lock_shared", key=LOCK_KEY)],
            [TRIGGER_FUNCTION.format(lock="pg_advisory_xact_lock", key=LOCK_KEY)],
        )
    ]
