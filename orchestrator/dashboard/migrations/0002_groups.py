"""The "operators" and "viewers" groups with their dashboard permissions.

Permissions are normally created after all migrations (post_migrate), so this
migration creates the two it needs itself; post_migrate then finds them.
"""

from django.db import migrations

PERMISSIONS = {
    "watch": "Can watch the live dashboard",
    "operate": "Can act from the dashboard (approve, pause, break deadlocks, release)",
}
GROUPS = {"operators": ["watch", "operate"], "viewers": ["watch"]}


def create_groups(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    content_type, _ = ContentType.objects.get_or_create(app_label="dashboard", model="dashboard")
    permissions = {
        codename: Permission.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )[0]
        for codename, name in PERMISSIONS.items()
    }
    for group_name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        group.permissions.add(*(permissions[codename] for codename in codenames))


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
