"""`python manage.py dashboard_groups [--operator USER ...] [--viewer USER ...]`."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator.dashboard.groups import groups_ensure
from orchestrator.dashboard.permissions import OPERATORS_GROUP, VIEWERS_GROUP


class Command(BaseCommand):
    help = (
        'Create the dashboard\'s "operators" and "viewers" groups if missing, and add users '
        "to them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--operator", action="append", default=[], metavar="USERNAME")
        parser.add_argument("--viewer", action="append", default=[], metavar="USERNAME")

    def handle(self, *args: Any, **options: Any) -> None:
        groups = groups_ensure()
        users = get_user_model().objects
        for group_name, usernames in (
            (OPERATORS_GROUP, options["operator"]),
            (VIEWERS_GROUP, options["viewer"]),
        ):
            for username in usernames:
                user = users.filter(**{users.model.USERNAME_FIELD: username}).first()
                if user is None:
                    raise CommandError(f"no user named {username!r}")
                user.groups.add(groups[group_name])
                self.stdout.write(f"{username} is in {group_name}")
        self.stdout.write("groups: " + ", ".join(sorted(groups)))
