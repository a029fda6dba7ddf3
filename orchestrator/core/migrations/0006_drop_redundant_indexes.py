"""Drop three indexes that another index already serves (fewer index writes per
lock cycle): core_event (team_id) beside event_team_id (team_id, id);
core_resourceversion (resource_id) beside resource_version_unique (resource_id,
version); lock_live_by_resource beside one_live_lock_per_agent_and_resource
(resource_id, agent_id) with the same condition."""


import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('core', '0005_step_journal_and_write_keys'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='lock',
            name='lock_live_by_resource',
        ),
        migrations.AlterField(
            model_name='event',
            name='team',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='events', to='core.team'),
        ),
        migrations.AlterField(
            model_name='resourceversion',
            name='resource',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='versions', to='core.resource'),
        ),
    ]
