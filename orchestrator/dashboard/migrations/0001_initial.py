from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Dashboard",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
            ],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [
                    ("watch", "Can watch the live dashboard"),
                    (
                        "operate",
                        "Can act from the dashboard (approve, pause, break deadlocks, release)",
                    ),
                ],
            },
        ),
    ]
