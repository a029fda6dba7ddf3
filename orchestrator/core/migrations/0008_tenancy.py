"""Teams as tenants, part 1: grants, and a team for every resource that had none."""

import django.db.models.deletion
from django.db import migrations, models


DEFAULT_TEAM = "default"


def give_every_resource_a_team(apps, schema_editor):
    """A resource without a team goes to the team of the agent that created it (the
    agent of its version 0), or else to the team named "default" (created if needed)."""
    Resource = apps.get_model("core", "Resource")
    ResourceVersion = apps.get_model("core", "ResourceVersion")
    Team = apps.get_model("core", "Team")
    orphans = Resource.objects.filter(team__isnull=True)
    creators = dict(
        ResourceVersion.objects.filter(resource__in=orphans, version=0, agent__isnull=False)
        .values_list("resource_id", "agent__team_id")
    )
    default = None
    for resource in orphans.only("id"):
        team_id = creators.get(resource.id)
        if team_id is None:
            if default is None:
                default, _ = Team.objects.get_or_create(
                    name=DEFAULT_TEAM,
                    defaults={"description": "Owns the resources that had no team."},
                )
            team_id = default.id
        Resource.objects.filter(id=resource.id).update(team_id=team_id)


class Migration(migrations.Migration):

    dependencies = [
        ('core', '0007_event_log_shared_lock'),
    ]

    operations = [
        migrations.CreateModel(
            name='ResourceGrant',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('prefix', models.CharField(blank=True, help_text='Without a resource: every resource of the owner whose name starts with this (empty: all of them).', max_length=200)),
                ('access', models.CharField(choices=[('read', 'Read (read, shared locks)'), ('read_write', 'Read and write (any lock, writes, approvals)')], max_length=16)),
                ('note', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['owner__name', 'team__name', 'prefix'],
            },
        ),
        migrations.AddField(
            model_name='resourcegrant',
            name='owner',
            field=models.ForeignKey(help_text='The sharing team.', on_delete=django.db.models.deletion.CASCADE, related_name='grants_given', to='core.team'),
        ),
        migrations.AddField(
            model_name='resourcegrant',
            name='resource',
            field=models.ForeignKey(blank=True, help_text='One resource of the owner; leave empty to share by prefix.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='grants', to='core.resource'),
        ),
        migrations.AddField(
            model_name='resourcegrant',
            name='team',
            field=models.ForeignKey(help_text='The team whose agents may use what is shared.', on_delete=django.db.models.deletion.CASCADE, related_name='grants_received', to='core.team'),
        ),
        migrations.AddIndex(
            model_name='resourcegrant',
            index=models.Index(fields=['team', 'owner'], name='grant_team_owner'),
        ),
        migrations.AddConstraint(
            model_name='resourcegrant',
            constraint=models.CheckConstraint(condition=models.Q(('team', models.F('owner')), _negated=True), name='grant_other_team'),
        ),
        migrations.AddConstraint(
            model_name='resourcegrant',
            constraint=models.CheckConstraint(condition=models.Q(('resource__isnull', True), ('prefix', ''), _connector='OR'), name='grant_resource_or_prefix'),
        ),
        # Last: the updates leave foreign-key checks pending on core_resource.
        migrations.RunPython(give_every_resource_a_team, migrations.RunPython.noop),
    ]
