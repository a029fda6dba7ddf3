"""Teams as tenants, part 2: every resource has a team (0008 gave one to those that
had none), and its name is unique within that team rather than globally; names may
not contain "::" (it qualifies a name with a team's). A migration of its own:
PostgreSQL refuses to alter a table with the pending foreign-key checks of 0008's
updates in the same transaction."""

import django.db.models.deletion
import orchestrator.core.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('core', '0008_tenancy'),
    ]

    operations = [
        migrations.AlterField(
            model_name='resource',
            name='name',
            field=models.CharField(max_length=200, validators=[orchestrator.core.models.no_team_separator]),
        ),
        migrations.AlterField(
            model_name='resource',
            name='team',
            field=models.ForeignKey(help_text='The team that owns it; other teams reach it only through a grant.', on_delete=django.db.models.deletion.PROTECT, related_name='resources', to='core.team'),
        ),
        migrations.AlterField(
            model_name='team',
            name='name',
            field=models.CharField(max_length=200, unique=True, validators=[orchestrator.core.models.no_team_separator]),
        ),
        migrations.AddConstraint(
            model_name='resource',
            constraint=models.UniqueConstraint(fields=('team', 'name'), name='resource_name_unique_in_team'),
        ),
    ]
